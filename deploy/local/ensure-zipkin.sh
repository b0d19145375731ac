#!/usr/bin/env bash
# Provision the Zipkin server (exec jar with its web UI) in a cache outside the repo, like the Dapr runtime.
# The local stack's trace viewer: the sidecars and services export spans to it. Needs Java 17+ to run
# and Maven to fetch; the stack comes up without it (tracing then has nowhere to go, and says so).
set -euo pipefail

ZIPKIN_VERSION="${ZIPKIN_VERSION:-3.5.1}"
ZIPKIN_HOME="${PGMETA_ZIPKIN_HOME:-$HOME/.cache/pgmeta/zipkin}"
JAR="$ZIPKIN_HOME/zipkin-server-$ZIPKIN_VERSION-exec.jar"

say() { echo "[zipkin] $*"; }

if [ -s "$JAR" ]; then
  say "zipkin-server $ZIPKIN_VERSION already in $ZIPKIN_HOME"
  exit 0
fi
command -v mvn >/dev/null 2>&1 || { say "Maven (mvn) not found: cannot fetch zipkin-server; the stack runs without a trace viewer"; exit 1; }
mkdir -p "$ZIPKIN_HOME"
say "fetching io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec (~131 MB, first time only)"
# dependency:copy needs no project; it resolves through the user's Maven settings (mirrors, proxies).
mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
  -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
  -DoutputDirectory="$ZIPKIN_HOME.partial" -Dmdep.overWriteReleases=true
mv "$ZIPKIN_HOME.partial/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$JAR.tmp"
rm -rf "$ZIPKIN_HOME.partial"
mv "$JAR.tmp" "$JAR"
say "installed $JAR"
