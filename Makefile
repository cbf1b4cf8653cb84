# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint format bench
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/ring_selection.py
	$(PY) benchmarks/train_throughput.py --preset cpu
