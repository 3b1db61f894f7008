# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(abspath $(VENV))

.PHONY: setup demo test lint test-fast bench clean help

help:
	@echo "make demo   - run the whole pipeline end to end on CPU (synthetic scene, ROS 2, query)"
	@echo "make test   - lint + the full test suite (ROS tests in a private network namespace)"
	@echo "make setup  - only create/refresh .venv (scripts/setup.sh)"
	@echo "make bench  - run the benchmarks (bench/), results in bench/results/"

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m ccl_lgs_ros.ros.demo $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check src test bench scripts launch
	PYTHONPATH=src $(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy src/ccl_lgs_ros

test: setup
	bash scripts/run_tests.sh $(TEST_ARGS)

test-fast: setup
	bash scripts/run_tests.sh -m "not slow" $(TEST_ARGS)

bench: setup
	bash bench/run_all.sh

clean:
	rm -rf build log install .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
