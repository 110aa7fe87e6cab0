# The newcomer's two commands:  `make bench`  and  `make test`.
# Everything is installed into .venv from this repository's own files.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= test,vllm,gaia,browser,mcp,k8s,swift,scaler,bfcl,agents,ray,fast

.PHONY: bench test setup setup-test lint typecheck pytest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

setup: $(BIN)/python            ## core install + matplotlib: enough for `python -m engine.bench`
	$(BIN)/pip install -q -e '.[plot]'

setup-test: $(BIN)/python       ## everything the test suite uses (real vLLM on CPU included)
	bash scripts/setup-test.sh $(VENV) $(EXTRAS)

bench: setup                    ## the main job on embedded defaults
	$(BIN)/python -m engine.bench

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check engine
	$(BIN)/mypy engine backends tools gaia scaler bfcl

pytest: setup-test
	DRILLYARD_REQUIRE_VLLM=1 DRILLYARD_REQUIRE_SWIFT=1 DRILLYARD_REQUIRE_BROWSER=1 DRILLYARD_REQUIRE_BFCL=1 \
	  DRILLYARD_REQUIRE_AGENTS=1 DRILLYARD_REQUIRE_RAY=1 DRILLYARD_REQUIRE_KUBECTL=1 $(BIN)/python -m pytest

test: setup-test lint pytest    ## the whole test suite, as CI runs it

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
