# Two commands: `make run` and `make test`. Each creates .venv and installs the
# project into it first (again only when pyproject.toml changes).
# Benchmarks, by hand: `make bench-<name>` runs bench/<name>.py (BENCH_ARGS are
# passed on), `make bench` runs them all.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test clean bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m service.local

test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

BENCHMARKS := $(patsubst bench/%.py,%,$(filter-out bench/_%,$(wildcard bench/*.py)))

bench: $(addprefix bench-,$(BENCHMARKS))

bench-%: $(BIN)/.installed bench/%.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/$*.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
