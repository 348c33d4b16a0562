# Everything runs in a project virtual environment (.venv), made with $(PYTHON): a stock Debian or
# Ubuntu Python refuses `pip install` outside one (PEP 668). Activate it to use `mlmon` directly:
# `. .venv/bin/activate`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-unit install install-test lint faust-check

$(PY):
	PYTHON=$(PYTHON) bash scripts/ensure-system-deps venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e .

install-test: $(PY)
	PYTHON=$(PYTHON) bash scripts/ensure-system-deps
	$(PY) -m pip install -q -e ".[test]"

demo: install
	$(VENV)/bin/mlmon demo

test: install-test
	$(PY) -m pytest

test-unit: install-test
	$(PY) -m pytest -m unit

# Before moving a pin of faust-streaming, aiokafka, mode-streaming or rocksdict: the guard on what
# the patches rely on, then the chaos suite (kills, outages, rebalances) on the installed versions.
faust-check: install-test
	$(PY) -m pytest tests/unit/kafka/test_faust_guard.py tests/integration/chaos

lint: $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	$(VENV)/bin/ruff check stream tests benchmarks
	$(VENV)/bin/mypy stream
