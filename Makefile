# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install scenarios fonts clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/billing demo

# Two processes, one test file each at a time (a file's tests share a module's server).
test: $(STAMP)
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks

# The public acceptance scenarios, driven through the installed CLI on both stores.
scenarios: $(STAMP)
	$(BIN)/python tests/scenarios/run.py --billing $(BIN)/billing
	$(BIN)/python tests/scenarios/run.py --billing $(BIN)/billing --postgres postgresql://postgres@localhost:5432/postgres

# Rebuild the PDF's fonts (templates/fonts) from Debian's fonts-dejavu-core.
fonts: $(STAMP)
	$(BIN)/python templates/fonts/build.py

clean:
	rm -rf $(VENV) billing.db billing-demo documents .pytest_cache
