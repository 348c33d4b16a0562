PYTHON ?= python3

.PHONY: demo test test-unit install install-test lint

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	bash scripts/ensure-system-deps
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	mlmon demo

test: install-test
	$(PYTHON) -m pytest

test-unit: install-test
	$(PYTHON) -m pytest -m unit

lint:
	$(PYTHON) -m pip install -q -e ".[dev]"
	ruff check stream tests benchmarks
	mypy stream
