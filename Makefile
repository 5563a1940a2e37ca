# `make env` builds .venv with the whole pinned stack; a second run does nothing.
# `make test` / `make demo` call it first, so on a fresh machine they do all the set-up.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.stack-installed
EXT_SRC := $(wildcard ops/*.cpp ops/*.h ops/*.cu ops/*/*.cpp ops/*/*.h ops/*/*.cu ops/*/*.cuh) setup.py
EXT     := $(VENV)/.ext-built
JOBS    ?= 2

.PHONY: env test demo bench clean-ext

env: $(EXT)

$(VPY):
	$(PY) -m venv $(VENV)

# torch first from its pinned line, then setuptools, then mmcv (source build with ops,
# ~32 min on 2 cores; pip caches the wheel so later environments take seconds), then the rest.
$(STAMP): requirements.txt | $(VPY)
	$(PIP) install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(PIP) install --quiet "$$(grep -E '^setuptools' requirements.txt)" wheel "$$(grep -E '^ninja==' requirements.txt)"
	MMCV_WITH_OPS=1 MAX_JOBS=$(JOBS) $(PIP) install --no-build-isolation "$$(grep -E '^mmcv==' requirements.txt)"
	$(PIP) install --quiet -r requirements.txt
	touch $@

# The package itself, with its C++ extension built against the venv's torch.
$(EXT): $(STAMP) $(EXT_SRC)
	MAX_JOBS=$(JOBS) $(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

test: env
	$(VPY) -m pytest -q tests

# The main job, until the detection/segmentation demo lands: the op benchmark.
demo: bench

# The op against unfold and a depthwise 7x7 conv on the RedNet-50 shapes (JSON + table).
bench: env
	$(VPY) tools/benchmark_op.py --out work_dirs/benchmark_op_cpu.json

clean-ext:
	rm -rf build involution_mm/*.so $(EXT)
