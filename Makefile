# Every target does its own set-up: a fresh clone needs nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck bench bench-peers bench-micro clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check h2pool tests bench
	$(PY) -m mypy --strict h2pool

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.criteria $(if $(URL),--url $(URL))

bench-peers: $(STAMP)
	$(PY) -m bench.criteria --peers $(if $(URL),--url $(URL))

bench-micro: $(STAMP)
	$(PY) -m pytest bench/micro --benchmark-only -p no:cacheprovider -o testpaths=bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache bench/results/*.json
