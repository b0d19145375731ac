#!/usr/bin/env bash
# Provision the Dapr runtime (daprd, placement, scheduler) at a pinned version in ~/.dapr/bin,
# where `dapr init --slim` would put it. Reuses what is there when the version matches; otherwise
# runs `dapr init --slim` when a dapr CLI exists; otherwise builds from the Go module (no GitHub access).
set -euo pipefail

# 1.18.2, not 1.18.3: 1.18.3 needs durabletask-go v0.12.4, which the Go module proxy here refuses
# (docs/decisions/0001-dapr-runtime-version.md).
DAPR_RUNTIME_VERSION="${DAPR_RUNTIME_VERSION:-1.18.2}"
DAPR_BIN="${DAPR_BIN:-$HOME/.dapr/bin}"
BUILD_ROOT="${DAPR_BUILD_ROOT:-$HOME/.cache/pgmeta/dapr-build}"

say() { echo "[dapr] $*"; }

STAMP="$DAPR_BIN/.pgmeta-runtime-version"

# daprd reports its version; placement and scheduler have no --version flag, so a stamp written
# next to them records what was installed together.
runtime_ok() {
  [ -x "$DAPR_BIN/daprd" ] && [ -x "$DAPR_BIN/placement" ] && [ -x "$DAPR_BIN/scheduler" ] || return 1
  [ "$("$DAPR_BIN/daprd" --version 2>/dev/null)" = "$DAPR_RUNTIME_VERSION" ] || return 1
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DAPR_RUNTIME_VERSION" ] && return 0
  # Installed by `dapr init --slim` (no stamp): trust daprd's version for the set.
  [ ! -f "$STAMP" ] && return 0
  return 1
}

if runtime_ok; then
  say "daprd, placement, scheduler $DAPR_RUNTIME_VERSION already in $DAPR_BIN"
else
  mkdir -p "$DAPR_BIN"
  rm -f "$STAMP"
  if command -v dapr >/dev/null 2>&1 && dapr init --slim --runtime-version "$DAPR_RUNTIME_VERSION" >/dev/null 2>&1 && runtime_ok; then
    say "installed runtime $DAPR_RUNTIME_VERSION with 'dapr init --slim'"
  else
    command -v go >/dev/null 2>&1 || { say "ERROR: Go is needed to build the Dapr runtime and was not found"; exit 1; }
    say "building daprd, placement, scheduler $DAPR_RUNTIME_VERSION from the Go module (first time only, several minutes)"
    src_dir=$(go mod download -json "github.com/dapr/dapr@v$DAPR_RUNTIME_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    work="$BUILD_ROOT/dapr-$DAPR_RUNTIME_VERSION"
    if [ ! -f "$work/go.mod" ]; then
      rm -rf "$work"; mkdir -p "$(dirname "$work")"
      cp -r "$src_dir" "$work"; chmod -R u+w "$work"
    fi
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -tags stablecomponents \
      -ldflags "-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_RUNTIME_VERSION" \
      -o "$DAPR_BIN/" ./cmd/daprd ./cmd/placement ./cmd/scheduler)
    echo "$DAPR_RUNTIME_VERSION" > "$STAMP"
    runtime_ok || { say "ERROR: built binaries do not report version $DAPR_RUNTIME_VERSION"; exit 1; }
    say "built runtime into $DAPR_BIN"
  fi
fi

# The dapr CLI is optional: `dapr publish` has an equivalent in `pgmeta publish`. Its Go module is
# refused by the module proxy here, so it is not built (docs/decisions/0001-dapr-runtime-version.md).
if command -v dapr >/dev/null 2>&1; then say "dapr CLI: $(command -v dapr)"; fi
