# recbench: install, train, test. Real datasets are found through RECBENCH_DATA_DIR.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_CPU ?= torch==2.13.0
SHARED_DATA := $(abspath ../shared/datasets)
ifneq ($(wildcard $(SHARED_DATA)),)
export RECBENCH_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: install train test test-all lint format bench clean

# torch first: without a GPU take the CPU wheel so pip does not pull a multi-GB CUDA build.
install:
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "$(TORCH_CPU)"; fi
	$(PIP) install -q -e ".[dev]"

train: install
	recbench train model=din

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m "" 

lint:
	ruff check recbench tests scripts
	ruff format --check recbench tests scripts

format:
	ruff format recbench tests scripts
	ruff check --fix recbench tests scripts

bench: install
	$(PYTHON) scripts/bench_loader.py
	recbench bench model=deepfm dataset=movielens-100k

clean:
	rm -rf outputs .pytest_cache
