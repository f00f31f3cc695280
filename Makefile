# Video-XL-2 training framework: install, test, demo.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# the install does not byte-compile (below), so each module is compiled when a run first imports it; writing
# that .pyc lets later processes reuse it, even where the environment sets PYTHONDONTWRITEBYTECODE (then every
# process would compile torch's modules again)
export PYTHONDONTWRITEBYTECODE :=

.PHONY: install test demo lint clean

install: $(STAMP)

# torch first (pinned CPU wheel, by pip: it reads the machine's pip config, where that wheel lies), then the
# package and its dev extras by uv, which resolves and installs them faster than pip (the same versions;
# install 29 s -> 16 s on 2 cores); pip does it where uv cannot be had. Neither byte-compiles (pip: --no-compile):
# Python compiles only the modules a run imports, on first import, instead of every installed file now
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile uv && $(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev]" \
		|| $(BIN)/pip install -q --no-compile -e ".[dev]"
	touch $(STAMP)

# the demo's own extra (matplotlib, for the report's plots): `dev` includes it, so after `make install` this
# only checks; a venv without it gets `pip install -e ".[demo]"`
$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q --no-compile -e ".[demo]"
	touch $(DEMO_STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# the demo process (data generation, evaluation) runs its torch ops on DEMO_THREADS threads; training runs in
# demo/demo.yaml's `ranks` processes of `threads_per_rank` threads each
DEMO_THREADS ?= 2
demo: $(DEMO_STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/python -m demo

lint: $(STAMP)
	$(BIN)/ruff check model data train evaluation demo tests

clean:
	rm -rf outputs .pytest_cache
