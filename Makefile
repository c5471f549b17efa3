# mwml: `make run` and `make test` each set everything up first (idempotent), then do their job.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mwml-installed

# Read the Made With ML files from the shared mirror when it is there and nothing else was chosen.
SHARED_MIRROR := $(abspath ../shared/data/madewithml)
ifeq ($(origin MWML_DATA_MIRROR), undefined)
ifneq ($(wildcard $(SHARED_MIRROR)/dataset.csv),)
export MWML_DATA_MIRROR := $(SHARED_MIRROR)
endif
endif

.PHONY: help setup run serve monitor test test-full sync-check lint format bench bench-train bench-tune bench-evaluate bench-serve bench-monitor bench-optimize bench-scale bench-rollout bench-footprint docs readme lab clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv, install mwml[dev], register the `mwml` Jupyter kernel, nbdev git hooks

$(STAMP): settings.ini setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name mwml --display-name "Python (mwml)"
	if git rev-parse --git-dir >/dev/null 2>&1; then $(BIN)/nbdev_install_hooks >/dev/null; fi
	touch $@

run: setup ## the main job on embedded defaults: fetch -> validate -> train -> evaluate -> behavioural tests -> register -> gate
	$(BIN)/mwml pipeline

serve: setup ## the HTTP API for the registry's champion on 127.0.0.1:8000 (uvicorn; REPLICAS=2 for Ray Serve; run make run first)
	$(BIN)/mwml serve --replicas $(or $(REPLICAS),0)

monitor: setup ## check the served champion's prediction log for drift: report in reports/, exit 4 on an alert (WINDOW=200)
	$(BIN)/mwml monitor --window $(or $(WINDOW),200)

# pytest on both cores: a module whose tests share fixtures stays on one worker, the Ray modules share one (tests/conftest.py)
PYTEST := $(BIN)/python -m pytest tests -n 2 --dist load
NBDEV_TEST := HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/nbdev_test --n_workers 2 --timing

test: setup sync-check ## the quick tier (minutes): sync checks, the notebooks' examples, every real part once, each room's happy path and bad input
	$(NBDEV_TEST)
	$(PYTEST) -m "not full"

test-full: setup sync-check ## everything (what CI runs): the quick tier plus the notebooks' `#| slow` cells and the long proofs
	$(NBDEV_TEST) --flags slow
	$(PYTEST)

sync-check: setup ## notebooks clean, library and README in sync with the notebooks
	$(BIN)/python tools/check_sync.py

lint: setup ## ruff over the library, notebooks, tests and tools
	$(BIN)/ruff check mwml nbs tests tools benchmarks
	$(BIN)/ruff format --check tests tools benchmarks

format: setup ## ruff-format the hand-written Python, then clean, export and regenerate README
	$(BIN)/ruff format tests tools benchmarks
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(MAKE) readme

bench: setup ## measure the baseline (quality with interval, speed, size, memory) into benchmarks/results/
	$(BIN)/python benchmarks/baseline.py

bench-train: setup ## train the tagger in-process and on Ray Train x2, with intervals and times (GPU: benchmarks/train.py --device cuda)
	$(BIN)/python benchmarks/train.py --workers 2

bench-evaluate: setup ## evaluate baseline and calibrated MiniLM tagger: intervals, slices, calibration, pass rates (about 4 min)
	$(BIN)/python benchmarks/evaluate.py

bench-serve: setup ## latency/throughput in-process and over HTTP: naive handler, uvicorn, Ray Serve (trains a tagger unless MODEL=...)
	$(BIN)/python benchmarks/serve.py $(if $(MODEL),--model $(MODEL))

bench-monitor: setup ## drift detection, false alarms and label-free F1 error over simulated shifts (trains a MiniLM tagger on a 560-row sample, about 5 min, unless MODEL=...)
	$(BIN)/python benchmarks/monitor.py $(if $(MODEL),--model $(MODEL))

bench-optimize: setup ## every variant (ONNX fp32, int8, student, pruned, their int8) on one table, QOperator vs QDQ, memory, FLOP/s vs peak (trains MiniLM unless MODEL=...; about 30 min)
	$(BIN)/python benchmarks/optimize.py $(if $(MODEL),--model $(MODEL)) --keep $(or $(VARIANTS),/tmp/mwml-variants)

bench-scale: setup ## Ray Serve's batching (serve.batch vs MicroBatcher), serve at concurrency 32 and predict-file on one node and on a real two-node cluster (about 15 min)
	$(BIN)/python benchmarks/scale.py $(if $(MODEL),--model $(MODEL))

bench-rollout: setup ## canary rollback of bad candidates, A/A false positives under peeking, SRM, bandit regret, on streams of real baseline answers (about 3 min)
	$(BIN)/python benchmarks/rollout.py

bench-footprint: setup ## venv size; on a fresh clone: make setup, make test, then .ci/run 3 times and once beside a CPU burner, timed (about 2 h)
	$(BIN)/python benchmarks/footprint.py

bench-tune: setup ## a 12-trial MiniLM search on 300 rows, then default vs best config on holdout (about 15 min on 2 cores)
	$(BIN)/python benchmarks/tune.py --num-samples 12 --sample-size 300 --max-epochs 4

readme: setup ## README.md from nbs/index.ipynb, its figures filled from benchmarks/results/*.json (without Quarto)
	$(BIN)/python tools/readme.py

docs: setup ## the Quarto site where Quarto is installed (the docs workflow), else every notebook as HTML in _docs/ (offline)
	if command -v quarto >/dev/null; then $(BIN)/nbdev_docs; \
	else echo "Quarto is not installed here: rendering the notebooks to _docs/ (the docs workflow builds the Quarto site)"; \
	$(BIN)/python tools/readme.py && $(BIN)/python tools/docs.py; fi

lab: setup ## JupyterLab on 127.0.0.1 with the mwml kernel
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs

clean: ## remove what runs produce (keeps .venv, data/raw and the MLflow store)
	rm -rf reports logs ray_results _docs _proc .pytest_cache .ruff_cache nbs/.quarto nbs/_site
