# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-slurm test lint format bench
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# the same demo with conversion and fine-tuning as one job array on a local Slurm cluster (root)
demo-slurm: setup
	bash tools/slurm/start_local_slurm.sh
	DEMO_CLUSTER=slurm $(PY) tools/demo.py

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m benchmarks.ring_selection
	$(PY) -m benchmarks.train_throughput --preset cpu
