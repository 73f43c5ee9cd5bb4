# nucseg: `make help` lists the targets. Every target creates and reuses .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast train check-data compare tensorboard tensorboard-check bench lint clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv and install nucseg with the tested pins

demo: $(STAMP) ## Train U-Net, ResUNet and LinkNet-34 on synthetic H&E (a 60 s training budget each), test each, print the table
	$(PY) train.py -m experiment=demo model=unet,resunet,linknet34
	$(PY) -m nucseg.compare

test: $(STAMP) ## Run the whole test suite (slow tests included)
	$(PY) -m pytest -q

test-fast: $(STAMP) ## Run the tests not marked slow (the inner loop; CI runs make lint, then make test)
	$(PY) -m pytest -q -m "not slow"

train: $(STAMP) ## Train with the defaults (ARGS="model=resunet ..." to override)
	$(PY) train.py $(ARGS)

check-data: $(STAMP) ## Check a MoNuSeg root (ROOT=path; default: the MONUSEG_ROOT variable): every problem at once, exit 2 if any
	$(PY) -m nucseg.data.check $(ROOT)

compare: $(STAMP) ## Compare the runs of the newest multirun (or DIRS="logs/multiruns/...")
	$(PY) -m nucseg.compare $(DIRS)

tensorboard: $(STAMP) ## Serve TensorBoard for all runs on 127.0.0.1:6006
	$(PY) -m tensorboard.main --logdir logs --host 127.0.0.1

tensorboard-check: $(STAMP) ## Start TensorBoard on the newest sweep (or DIRS=...), check tags and HParams over HTTP, stop it
	$(PY) scripts/tensorboard_check.py $(DIRS)

bench: $(STAMP) ## Benchmarks: inference (ours vs MONAI vs raw forward, streaming memory), training throughput (per model; fp32 vs channels-last vs bf16 vs auto, this CPU and as an AVX2 one)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[bench]'
	$(PY) benchmarks/inference.py --rounds 3 --stream-size 5000 10000
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_throughput.py --models unet:32 resunet:32 linknet34 --modes fp32 fp32-cl bf16-cl auto --steps 4 --isa native avx2
	$(PY) benchmarks/instance_metrics.py
	$(PY) benchmarks/datapath.py --steps 4

lint: $(STAMP) ## Lint with the pinned ruff (CI runs it before the tests)
	$(PY) -m ruff check .

clean: ## Remove caches (keeps .venv and logs)
	rm -rf .pytest_cache .ruff_cache .cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
