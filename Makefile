# Video-XL-2 training framework: install, test, demo.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo lint clean

install: $(STAMP)

# torch first (pinned CPU wheel), then the package and its dev extras.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# the demo process (data generation, evaluation) runs its torch ops on DEMO_THREADS threads; training runs in
# conf/demo.yaml's `ranks` processes of `threads_per_rank` threads each
DEMO_THREADS ?= 2
demo: $(STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/python -m train.demo

lint: $(STAMP)
	$(BIN)/ruff check model data train evaluation tests

clean:
	rm -rf outputs .pytest_cache
