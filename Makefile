# Every target creates .venv if it is missing and installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

run: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/convflow demo

test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pytest

lint: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[lint]'
	$(BIN)/ruff check convflow tests
	$(BIN)/mypy

# Regenerate the README's table of CONVFLOW_* variables from convflow/config.py.
readme: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python ci/readme_tables.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
