# Two commands on a fresh machine: `make run` (venv, runtime install, demo model, serve) and `make test`.
# `make run` installs the runtime only; `make test` adds the test tools (extra `dev`). WITH_ST=1 also
# installs the optional sentence-transformers backend (extra `st`, torch): .ci/run sets it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS := $(shell cksum pyproject.toml | cut -d' ' -f1)
WITH_ST ?=
comma := ,
TEST_EXTRAS := dev$(if $(WITH_ST),$(comma)st)
# a stamp per install set, named after pyproject.toml's checksum: an edited pyproject installs again
RUNTIME_STAMP := $(VENV)/.installed-runtime-$(DEPS)
TEST_STAMP := $(VENV)/.installed-test-$(DEPS)$(if $(WITH_ST),-st)
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_KB := models/demo-shop-kb.csv
DEMO_MODEL := models/demo
DATA ?= ../shared/data

.PHONY: install install-test run demo test lint format bench clean test-tools

$(RUNTIME_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	rm -f $(VENV)/.installed-* && touch $(RUNTIME_STAMP)

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

install: $(RUNTIME_STAMP)

install-test: $(TEST_STAMP)

$(DEMO_MODEL)/manifest.json: $(RUNTIME_STAMP) $(DEMO_KB)
	$(BIN)/kefu build $(DEMO_KB) -o $(DEMO_MODEL)

demo: $(DEMO_MODEL)/manifest.json

# the demo shop "demo" (FAQ published, catalog imported) is created on first start; see README
DEMO_API_KEY ?= kf_demo_local_only
run: demo
	KEFU_DEMO_SHOP=demo KEFU_DEMO_API_KEY=$(DEMO_API_KEY) \
	$(BIN)/kefu serve --model $(DEMO_MODEL) --host $(HOST) --port $(PORT)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Debian's packages the tests drive: Chromium for the console's browser tests (no browser download), fonts so
# screenshots show Chinese, wrk for `kefu bench-http` and its test, QEMU's user-mode emulator to run the
# sentence encoder on a CPU without VNNI (tests/test_e5_onnx.py)
CHROMIUM := /usr/bin/chromium
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
WRK := /usr/bin/wrk
QEMU := /usr/bin/qemu-x86_64
test-tools:
	(test -x $(CHROMIUM) && test -f $(CJK_FONT) && test -x $(WRK) && test -x $(QEMU)) || \
	(apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei wrk qemu-user)

# two worker processes (pytest-xdist), a test file per worker at a time: the suite takes about half as long
# on 2 cores; the log audit then runs in the controller over every worker's log (tests/conftest.py)
TEST_WORKERS ?= 2
test: lint test-tools
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# the issues' quality and speed bars, peers computed in the same run
bench: $(TEST_STAMP)
	$(BIN)/python ../shared/bench/quality.py $(DATA)/smp2017
	$(BIN)/python ../shared/bench/quality.py $(DATA)/afqmc
	$(BIN)/python ../shared/bench/speed.py $(DATA)/afqmc

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .pytest_cache .mypy_cache .ruff_cache
