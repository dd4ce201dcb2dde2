# Quick start: `make test` (venv + install + lint + types + docs + tests), `make run`, `make bench`.
# `make docs`: the documentation site in build/docs (warnings are errors).
# `make test-matrix`: the core suites on every supported Python, default loop and uvloop.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-matrix lint docs run bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench conftest.py docs/conf.py
	$(VENV)/bin/ruff format --check src tests bench conftest.py docs/conf.py
	$(VENV)/bin/mypy --strict src

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs build/docs

test: lint docs
	$(PY) -m pytest $(PYTEST_ARGS)

test-matrix: $(STAMP)
	$(VENV)/bin/nox

run: $(STAMP)
	$(PY) -m iochannel

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .nox build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
