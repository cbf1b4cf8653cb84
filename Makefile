# The README's two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-slurm test test-all lint format bench mutation
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# the same demo with conversion and fine-tuning as one job array on a local Slurm cluster (root)
demo-slurm: setup
	bash tools/slurm/start_local_slurm.sh
	DEMO_CLUSTER=slurm $(PY) tools/demo.py

# `make test` leaves out the longest Slurm scenarios (marker `long`, about 6 min on 2 cores) so
# that it stays near 20 min on a fresh machine; `make test-all`, what CI runs, includes them.
TEST_SELECTION ?= -m "not long"
test: setup lint
	$(PY) -m pytest $(TEST_SELECTION) $(PYTEST_ARGS)

test-all: TEST_SELECTION :=
test-all: test

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m benchmarks.ring_selection
	$(PY) -m benchmarks.train_throughput --preset cpu

# Mutation testing of the estimators (issue 23; docs/mutation.md): mutmut over pretrain/losses.py,
# pools.py, ranking.py, samplers.py, monitor.py and methods/ against their fast tests
# ([tool.mutmut] in pyproject.toml). mutmut is installed on first use into $(MUTMUT_DIR) with
# pip --target, never into the venv. Long (see docs/mutation.md for its run time), so not part
# of `make test`.
MUTMUT_DIR ?= .cache/mutmut
MUTMUT_VERSION := 3.8.1
mutation: setup
	@test -x $(MUTMUT_DIR)/bin/mutmut || \
		$(PY) -m pip install -q --target $(MUTMUT_DIR) mutmut==$(MUTMUT_VERSION)
	rm -rf mutants
	PYTHONPATH=$(MUTMUT_DIR) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(MUTMUT_DIR)/bin/mutmut run --max-children 2
	PYTHONPATH=$(MUTMUT_DIR) $(MUTMUT_DIR)/bin/mutmut results
