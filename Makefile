# `make test` and `make demo` set everything up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast lint format demo chat-demo clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest

# Train the tiny model on the built-in corpus (the Python standard library's source), then sample from it.
# Re-running resumes from out/tiny and finishes at once if training is complete.
demo: $(STAMP)
	$(PY) run_train.py --config configs/tiny.yaml
	$(PY) run_inference.py --checkpoint out/tiny --prompt "def fibonacci(n):" --max-new-tokens 120 --temperature 0.7 --top-k 40 --seed 0

# Pretrain tiny (or reuse out/tiny), fine-tune it on the built-in conversations about the standard library
# (configs/chat-tiny.yaml), measure answers to held-out questions before and after, and ask one.
chat-demo: $(STAMP)
	$(PY) run_train.py --config configs/tiny.yaml
	$(PY) run_train.py --config configs/chat-tiny.yaml
	$(PY) scripts/chat_accuracy.py --checkpoint out/tiny --show 0
	$(PY) scripts/chat_accuracy.py --checkpoint out/chat-tiny --show 3
	$(PY) run_inference.py --checkpoint out/chat-tiny --chat --prompt "What is the signature of shutil.copyfile?" --max-new-tokens 48

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not distributed"

clean:
	rm -rf .pytest_cache .ruff_cache
