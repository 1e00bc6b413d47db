# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first (once; later runs reuse it
# until pyproject.toml or constraints.txt change).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
# llama-cpp-python compiles llama.cpp from source. Skip everything but the library (tools, examples, tests,
# server, the multimodal helper) to shorten the build; pip caches the built wheel for later installs.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install --quiet --upgrade pip
	@# torch first and exactly pinned: the CPU build. A looser request would fetch a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0 -c constraints.txt
	@echo "building llama-cpp-python (compiles llama.cpp: about 9 minutes on 2 cores the first time, then cached)"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -v llama-cpp-python -c constraints.txt > $(VENV)/llama-build.log 2>&1 & pid=$$!; \
	  while kill -0 $$pid 2>/dev/null; do \
	    step=$$(grep -oE '^ *\[[0-9]+/[0-9]+\]' $(VENV)/llama-build.log | tail -1 | tr -d ' ' || true); \
	    if [ -n "$$step" ]; then printf '\r  llama.cpp compile step %s ' "$$step"; fi; sleep 5; \
	  done; echo; \
	  wait $$pid || { tail -40 $(VENV)/llama-build.log; echo "error: llama-cpp-python build failed (full log: $(VENV)/llama-build.log)"; exit 1; }
	$(PIP) install --quiet -e '.[full,dev]' -c constraints.txt
	@touch $(STAMP)
	@echo "environment ready in $(VENV)"

test: $(STAMP)
	$(BIN)/python -m pytest

# The main job on the default teacher, as far as the pipeline exists today (a few minutes on 2 cores): a small
# slice of every stage, so a newcomer sees each one work. Outputs land in build/demo/.
DEMO := build/demo
ED := $(BIN)/edgedistill

demo: $(STAMP)
	@echo "== 1. pull the default teacher and look at it"
	$(ED) models pull smollm2-135m-instruct
	$(ED) models info smollm2-135m-instruct
	$(ED) models ask smollm2-135m-instruct "What is the capital of France?"
	@echo "== 2. the teacher answers 8 train and 4 validation prompts of each domain (resumable)"
	$(ED) generate --split train --limit 8 --max-new-tokens 128 --out $(DEMO)/teacher-train.jsonl
	$(ED) generate --split validation --limit 4 --max-new-tokens 128 --out $(DEMO)/teacher-validation.jsonl
	@echo "== 3. a 10-layer student with K-quant friendly width, pruned by measured importance"
	test -d $(DEMO)/student-init || $(ED) prune --layers 10 --hw-friendly --max-tokens 8192 --out $(DEMO)/student-init
	@echo "== 4. distill for 10 steps (far too short for a useful student: it shows the loop working)"
	rm -rf $(DEMO)/run
	$(ED) distill --student $(DEMO)/student-init --data $(DEMO)/teacher-train.jsonl \
	  --validation $(DEMO)/teacher-validation.jsonl --loss jsd --beta 0.5 --max-steps 10 --batch-size 4 \
	  --grad-accum 1 --lr 3e-4 --out $(DEMO)/run
	@echo "== 5. graded eval, 5 items per domain, student beside teacher"
	$(ED) eval $(DEMO)/run/student --teacher smollm2-135m-instruct --limit 5
	@echo "== 6. export the student as 8-bit GGUF (llama.cpp) and ONNX (onnxruntime), each validated in its runtime"
	@# (4-bit variants of a 10-step student fail their validation tolerance: it is far from converged)
	rm -rf $(DEMO)/bundles
	$(ED) export $(DEMO)/run/student --variant gguf:q8_0 --variant onnx:int8 --out $(DEMO)/bundles

clean-venv:
	rm -rf $(VENV)
