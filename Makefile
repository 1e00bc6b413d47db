# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first (once; later runs reuse it
# until pyproject.toml, constraints.txt or llama.cpp's build flags change).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
# llama-cpp-python compiles llama.cpp from source, with the fixed CPU baseline of edgedistill/formats/llamacpp_build.py
# (never -march=native: the build must run on the next machine), into a wheel cached under those flags.
LLAMA_WHEEL := $(BIN)/python -m edgedistill.formats.llamacpp_build wheel -c constraints.txt

.PHONY: demo test install clean-venv example

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt edgedistill/formats/llamacpp_build.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install --quiet --upgrade pip
	@# torch first and exactly pinned: the CPU build. A looser request would fetch a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0 -c constraints.txt
	@echo "building llama-cpp-python (compiles llama.cpp: about 9 minutes on 2 cores the first time, then cached)"
	wheel=$$($(LLAMA_WHEEL) --log $(VENV)/llama-build.log) && $(PIP) install --quiet --force-reinstall --no-deps "$$wheel"
	$(PIP) install --quiet -e '.[full,dev]' -c constraints.txt
	@# llama.cpp's own converter (and the tools' sources), from the sdist of the llama-cpp-python installed above
	$(BIN)/python -m edgedistill.formats.llamacpp_source
	@echo "building llama.cpp's llama-imatrix, llama-quantize and llama-bench from the same sources (a few minutes the first time, then cached)"
	$(BIN)/python -m edgedistill.formats.llamacpp_tools
	@touch $(STAMP)
	@echo "environment ready in $(VENV)"

# One test worker a core (at most 4), each pinned to its core by tests/conftest.py, handed the next test as it frees
# (--dist load: measured faster here than loadfile or worksteal, docs/cpus.md; the costliest fixtures are built once
# for all workers, tests/conftest.py built_once). TEST_WORKERS=0 runs the tests in this one process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load --durations=15

# The main job on the default teacher: `edgedistill run --target laptop` with a small budget (about 25 minutes
# on 2 cores), then the example app on one of its bundles. Outputs land in build/demo/.
DEMO := build/demo
# The demo's recipe (measured: benchmarks/results/distill/budget_curve.md): more teacher answers from the fast
# engine, read from a logit cache, instead of many epochs over 24 answers with a live teacher.
DEMO_TRAIN := 32
DEMO_STEPS := 80
DEMO_FIDELITY := 12
ED := $(BIN)/edgedistill

demo: $(STAMP)
	@echo "== 1. pull the default teacher and look at it"
	$(ED) models pull smollm2-135m-instruct
	$(ED) models info smollm2-135m-instruct
	$(ED) models ask smollm2-135m-instruct "What is the capital of France?"
	@echo "== 2. the whole trip for the laptop profile: the teacher (llama.cpp engine) answers $(DEMO_TRAIN) train and 4 validation"
	@echo "==    prompts a domain and its top-64 log-probs are cached once; a 10-layer K-quant friendly student is pruned"
	@echo "==    by measured importance and distilled from the cache for $(DEMO_STEPS) steps; the student and the teacher are exported"
	@echo "==    in every variant the profile allows and benched under its limits (in-domain fidelity on the teacher's"
	@echo "==    answers to $(DEMO_FIDELITY) test prompts a domain, with 95% intervals); the profile's objective picks one"
	@echo "==    (a second make demo reuses every stage whose inputs are unchanged)"
	@rc=0; $(ED) run --target laptop --out $(DEMO)/laptop --train-prompts $(DEMO_TRAIN) --steps $(DEMO_STEPS) \
	  --fidelity-prompts $(DEMO_FIDELITY) --eval-every 12 || rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "(nothing deployable for laptop: the lines above say why)"; \
	  elif [ $$rc -ne 0 ]; then exit $$rc; fi
	@echo "== 3. the offline support-desk example app on the student's 8-bit GGUF bundle (runtime only: no torch)"
	$(BIN)/python examples/support_desk.py $(DEMO)/laptop/export/student/gguf-q8_0 \
	  --ask "My order NW-1234 arrived damaged. What should I do?" --max-tokens 60

# The example app from a fresh virtual environment holding only the runtime extra (no torch, no transformers):
#   make example BUNDLE=build/demo/laptop/export/student/gguf-q8_0
RT_VENV := build/runtime-venv
BUNDLE ?= build/demo/laptop/export/student/gguf-q8_0
ONNX_BUNDLE ?= build/demo/laptop/export/student/onnx-int4

example: $(STAMP)
	@test -f $(BUNDLE)/manifest.json || { echo "error: no bundle at $(BUNDLE); run make demo first or pass BUNDLE=folder"; exit 2; }
	$(BIN)/python -m edgedistill.runtime_venv $(RT_VENV)
	cd /tmp && $(CURDIR)/$(RT_VENV)/bin/python $(CURDIR)/examples/support_desk.py $(abspath $(BUNDLE)) --timing \
	  --ask "My order NW-1234 arrived damaged. What should I do?" --ask "And how long does a refund take?" \
	  --max-tokens 80
	@if [ -f $(ONNX_BUNDLE)/manifest.json ]; then \
	  echo "== the same app on the ONNX bundle (onnxruntime-genai)"; \
	  cd /tmp && $(CURDIR)/$(RT_VENV)/bin/python $(CURDIR)/examples/support_desk.py $(abspath $(ONNX_BUNDLE)) --timing \
	    --ask "My order NW-1234 arrived damaged. What should I do?" --max-tokens 80; \
	else echo "(no ONNX bundle at $(ONNX_BUNDLE); pass ONNX_BUNDLE=folder to run the app on one)"; fi
	@echo "== the bench runner from the same runtime-only venv (exit 1 only means no variant met every budget)"
	$(RT_VENV)/bin/edgedistill bench $(BUNDLE) --target laptop --data calibration_data --eval-every 0 \
	  --repeats 1 --out $(RT_VENV)/bench || test $$? -eq 1

clean-venv:
	rm -rf $(VENV)
