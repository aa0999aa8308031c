# The two commands of the README's quickstart: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $@

install: $(VENV)/.installed

# Copy the sample product shots into ./RemoveBGProcess/input and process them once with
# the built-in defaults (local folder, bundled U²-Net small model, SQLite ledger).
demo: install
	mkdir -p RemoveBGProcess/input
	cp examples/samples/* RemoveBGProcess/input/
	$(BIN)/cutoutd run --once
	@echo
	@echo "Cutouts are in $(CURDIR)/RemoveBGProcess/output/ (originals in RemoveBGProcess/archive/)."
	@echo "Status page: run '$(BIN)/cutoutd run' and open http://127.0.0.1:9464/"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite: lint, types, unit, integration and end-to-end tests.
test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) RemoveBGProcess build dist *.egg-info
