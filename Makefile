# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest system-deps bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

system-deps:
	bash deploy/install-system-deps.sh

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

pytest: $(INSTALLED) system-deps
	$(BIN)/pytest -n 2 --dist loadfile

test: lint typecheck pytest

demo: $(INSTALLED) system-deps
	$(BIN)/smartcity demo

# Side-by-side benchmark against a Node-RED flow (bench/compare.py); writes docs/benchmarks.md and the plot.
BENCH_INSTALLED := $(VENV)/.installed-bench
$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

bench: $(BENCH_INSTALLED)
	bash deploy/install-system-deps.sh npm
	$(BIN)/python -m bench.compare $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
