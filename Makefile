# The two commands of the README:
#   make demo   run the dice example on the embedded default (no broker)
#   make test   install everything (Kafka's jars included) and run every test
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test install system-deps kafka-jars lint docs dist

demo: $(VENV)/.installed
	$(BIN)/kser --log-level WARNING demo

test: install system-deps kafka-jars
	$(BIN)/ruff check kser tests scripts examples benchmarks
	$(BIN)/mypy
	$(MAKE) docs
	$(BIN)/python -m pytest tests

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system-deps:
	scripts/install-system-deps

kafka-jars:
	$(PYTHON) scripts/kafka_local.py fetch

# the documentation site in site/ (mkdocs.yml); a warning fails it
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: install
	$(BIN)/ruff check kser tests scripts examples benchmarks
	$(BIN)/mypy

# a wheel of this version in dist/ (pip install 'dist/kser-<version>-py3-none-any.whl[postgres]')
dist: install
	$(BIN)/pip wheel -q --no-deps -w dist .
