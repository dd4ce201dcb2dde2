# Quick start: `make test` (venv + install + lint + types + docs + tests), `make run`, `make bench`.
# `make run` installs the package alone (no test tools); `make test` adds the test extras; either
# may come first.
# `make docs`: the documentation site in build/docs (warnings are errors).
# `make man`: the manual page, build/iochannel.1 (read it with man -l build/iochannel.1).
# `make test-matrix`: the core suites on every supported Python, default loop and uvloop.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The package with the test extras (make test), and the package alone (make run).
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: test test-matrix lint docs run man bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

# The test extras include all that running needs.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

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

run: $(RUN_STAMP)
	$(PY) -m iochannel

man: $(RUN_STAMP)
	mkdir -p build
	$(PY) -m iochannel --man > build/iochannel.1

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .nox build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
