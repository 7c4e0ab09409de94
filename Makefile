# The two commands of the README:  `make demo` (set up + run the demo)  and  `make test` (set up + tests).
PYTHON ?= python3.11
VENV ?= .venv
# torch/torchvision releases that pip finds on this project's machines without a download; override
# e.g. `make TORCH="torch torchvision"` elsewhere.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= 2
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test test-fast lint clean

$(BIN)/ftbench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/ftbench

demo: setup
	$(BIN)/snakemake --configfile workflow/presets/demo.yaml --cores $(CORES)
	@echo "report: results/report/index.html"

# Snakemake's linter, the formatters' checks and the generated reference: what CI runs before the tests
lint: setup
	@out=$$($(BIN)/snakemake --lint 2>&1); if echo "$$out" | grep -q "^Lints for"; then echo "$$out"; exit 1; fi
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/snakefmt --check Snakefile workflow/rules
	PYTHONPATH=src $(BIN)/python -m ftbench reference --check

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf results .snakemake
