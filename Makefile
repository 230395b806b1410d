# The two commands: `make serve` (example repository on :8000 HTTP, :8001 gRPC) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REPO ?= examples/model_repository
SERVE_ARGS ?=

.PHONY: serve test lint typecheck unit bench examples docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving the examples needs only the server and ONNX (plus onnx to build the models); the tests need every extra.
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[onnx]' 'onnx>=1.16'
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-serve

examples: $(VENV)/.installed-serve
	$(BIN)/python examples/build_repository.py $(REPO)

serve: examples
	$(BIN)/inferd serve --model-repository $(REPO) $(SERVE_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks examples fuzz

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/) into site/; strict: a broken link or a page missing from nav fails
# (not --quiet: it hides the warnings that strict mode counts).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: lint typecheck docs
	$(BIN)/pytest tests

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

bench: examples $(VENV)/.installed
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) $(REPO) site .pytest_cache .mypy_cache .ruff_cache
