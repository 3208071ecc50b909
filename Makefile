# The two commands of the quick start: `make serve` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8000

.PHONY: setup serve demo test test-fast lint bench system-deps clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the local CPU build is found for exactly this version; a looser
	# spec would pull gigabytes of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet -e ./clients/python
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m service.demo

serve: demo
	$(PY) -m service --port $(PORT)

# Binaries the tests drive as real processes: redis-server (the tests start their own) and
# chromium (headless, for the dashboard test).
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (the dashboard's browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup system-deps
	$(VENV)/bin/ruff check service tests bench deploy clients/python
	$(VENV)/bin/ruff format --check service tests bench deploy clients/python
	$(VENV)/bin/mypy service
	$(VENV)/bin/pytest -q

.PHONY: test-trl
# Only the TRL integration test (GRPOTrainer on CPU against a live service); it is part of
# `make test` too (trl is a test dependency).
test-trl: setup
	$(VENV)/bin/pytest -q -m trl tests/clients

.PHONY: test-ray
# The Ray Serve test (deploy/ray: two CPU replicas of the app on a local Ray cluster, one
# Redis). ray[serve] is not a test dependency (~1 min to install, ~100 MB of wheels), so it
# is installed here, torch on the same line so pip keeps the pinned CPU build.
test-ray: setup system-deps
	$(PY) -m pip install --quiet "ray[serve]" torch==2.13.0
	$(VENV)/bin/pytest -q -m ray tests/ray

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check service tests bench deploy clients/python
	$(VENV)/bin/ruff format --check service tests bench deploy clients/python
	$(VENV)/bin/mypy service

bench: setup
	$(PY) -m bench.throughput

.PHONY: bench-scale
# Throughput with 1, 2 and 3 replicas on one Redis behind a round-robin client (bench/SCALE.md).
bench-scale: setup system-deps
	$(PY) -m bench.scale

.PHONY: soak
# A bounded soak, not in CI: SOAK_MINUTES of mixed load against a real process and a real Redis;
# RSS, open fds, threads and Redis clients must stay flat (RELIABILITY.md). SOAK_ARGS=--model demo
# soaks the demo RM instead of the fake runner.
SOAK_MINUTES ?= 5
soak: setup system-deps
	$(PY) -m tests.e2e.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
