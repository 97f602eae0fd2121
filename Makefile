# Two commands on a fresh machine: `make run` (venv, install, demo model, serve) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_KB := models/demo-shop-kb.csv
DEMO_MODEL := models/demo
DATA ?= ../shared/data

.PHONY: install run demo test lint format bench clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,st]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

$(DEMO_MODEL)/manifest.json: $(STAMP) $(DEMO_KB)
	$(BIN)/kefu build $(DEMO_KB) -o $(DEMO_MODEL)

demo: $(DEMO_MODEL)/manifest.json

# the demo shop "demo" (FAQ published, catalog imported) is created on first start; see README
DEMO_API_KEY ?= kf_demo_local_only
run: demo
	KEFU_DEMO_SHOP=demo KEFU_DEMO_API_KEY=$(DEMO_API_KEY) \
	$(BIN)/kefu serve --model $(DEMO_MODEL) --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

# the issues' quality and speed bars, peers computed in the same run
bench: $(STAMP)
	$(BIN)/python ../shared/bench/quality.py $(DATA)/smp2017
	$(BIN)/python ../shared/bench/quality.py $(DATA)/afqmc
	$(BIN)/python ../shared/bench/speed.py $(DATA)/afqmc

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .pytest_cache .mypy_cache .ruff_cache
