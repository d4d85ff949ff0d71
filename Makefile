# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mirec-installed
# The CPU build of PyTorch goes in first: a bare `torch` requirement would pull the CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: venv demo test test-fast bench-prepare clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/mirec demo

test: venv
	$(BIN)/python -m pytest

# the quick loop: everything but the slow, torchrun and torch.compile tests
test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not distributed and not compile"

bench-prepare: venv
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) .pytest_cache
