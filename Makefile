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

.PHONY: env test demo compare data bench clean-ext

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

# The main job on embedded data: make the synthetic COCO/Cityscapes data, train Mask R-CNN
# and Semantic FPN RedNet-50 from scratch on CPU, evaluate them (AP, mIoU), save pictures
# of predictions and loss curves under work_dirs/demo/.
demo: env
	$(VPY) tools/demo.py

# The demo plus the stock ResNet-50 models on the same data, schedule and seed: a
# RedNet-vs-ResNet table and plot (work_dirs/demo/compare.{md,json,png}); about twice as long.
compare: env
	$(VPY) tools/demo.py --compare

# The synthetic COCO- and Cityscapes-format datasets under data/ (seconds).
data: env
	$(VPY) tools/dataset_converters/make_synthetic_data.py

bench: env
	$(VPY) tools/benchmark_op.py --out work_dirs/benchmark_op_cpu.json
	$(VPY) tools/benchmark_model.py --out work_dirs/benchmark_model_cpu.json

clean-ext:
	rm -rf build involution_mm/*.so $(EXT)
