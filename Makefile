# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run PORT=8080 HOST=0.0.0.0`: where `hexdispatch serve` listens.
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/hexdispatch serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The pure core only (dispatch/, protocol, lifecycle, cell core, kernel twins...): no Postgres, Redis, Ray or server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not live and not db and not redis" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .hexdispatch
