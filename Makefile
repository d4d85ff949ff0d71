# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mirec-installed
# The CPU build of PyTorch goes in first: a bare `torch` requirement would pull the CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: venv demo test test-fast browser bench-prepare clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/mirec demo

# The explorer's browser tests need Chromium and its driver from the system's packages. This
# target installs them when it can (root with apt-get) and otherwise says how; it never fails,
# and the browser tests skip, saying why, where no browser is installed.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "browser: chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "browser: installing chromium and chromium-driver with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	    || echo "browser: apt-get could not install chromium; the browser tests will be skipped"; \
	else \
	  echo "browser: chromium/chromedriver missing; install them (e.g. sudo apt-get install chromium" \
	       "chromium-driver) or the browser tests will be skipped"; \
	fi

test: venv browser
	$(BIN)/python -m pytest

# the quick loop: everything but the slow, torchrun and torch.compile tests
test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not distributed and not compile"

bench-prepare: venv
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) .pytest_cache
