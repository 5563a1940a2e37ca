# `make env` builds the venv with the whole pinned stack; a second run does nothing.
# `make test` / `make demo` call it first, so on a fresh machine they do all the set-up.
#
# TORCH=cuda (default, what CI runs): torch 2.14.1, the CUDA 13.0 build, with torchvision. The
#   extension is built with its CUDA kernels (nvcc; no GPU needed) and mmpretrain's models import.
# TORCH=cpu: the CPU torch 2.13.0 wheel in .venv-cpu. The op, models, detection and segmentation
#   work; classification needs torchvision, which has no build for it, and is skipped.
PY      ?= python3
TORCH   ?= cuda
ifeq ($(TORCH),cpu)
VENV    ?= .venv-cpu
TORCH_PINS = $$(sed -n 's/^\#cpu: *//p' requirements.txt)
else ifeq ($(TORCH),cuda)
VENV    ?= .venv
TORCH_PINS = $$(grep -E '^(torch|torchvision)==' requirements.txt)
else
$(error TORCH=$(TORCH): use TORCH=cuda (the default) or TORCH=cpu)
endif
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
TORCH_STAMP := $(VENV)/.torch-installed
STAMP   := $(VENV)/.stack-installed
TORCH_VERSION := $(VENV)/.torch-version
EXT_SRC := $(wildcard ops/*.cpp ops/*.h ops/*.cu ops/*/*.cpp ops/*/*.h ops/*/*.cu ops/*/*.cuh) setup.py
EXT     := $(VENV)/.ext-built
MMCV    := $(VENV)/.mmcv-installed
EXT_OWNER := involution_mm/.ext-built-for-venv
JOBS    ?= 2

.PHONY: env test demo compare data bench clean-ext FORCE

env: $(EXT)

$(VPY):
	$(PY) -m venv $(VENV)

# Order: torch from its pinned lines and the build tools; mmcv built against that torch; then the
# rest, with torch and mmcv already satisfied so that nothing replaces them.
$(TORCH_STAMP): requirements.txt | $(VPY)
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet "$$(grep -E '^setuptools' requirements.txt)" wheel "$$(grep -E '^ninja==' requirements.txt)"
	touch $@

# The installed torch's version, rewritten only when it changes: mmcv's ops and our extension
# are rebuilt against a new torch, however it got there.
$(TORCH_VERSION): $(TORCH_STAMP) FORCE
	@v="$$($(VPY) -c 'import torch; print(torch.__version__)')"; \
	  [ "$$(cat $@ 2>/dev/null)" = "$$v" ] || echo "$$v" > $@

# mmcv with its compiled ops, from the pinned sdist (10-30 min once per torch version: the
# script keeps the wheel per torch version).
$(MMCV): $(TORCH_VERSION) tools/install_mmcv.sh
	MAX_JOBS=$(JOBS) tools/install_mmcv.sh $(VPY)
	touch $@

$(STAMP): $(MMCV) requirements.txt
	grep -v -E '^(torch|torchvision)==' requirements.txt > $(VENV)/requirements-after-torch.txt
	$(PIP) install --quiet -r $(VENV)/requirements-after-torch.txt
	touch $@

# The venv whose torch the extension in this checkout was built against, rewritten only when
# another venv builds it: `pip install -e .` builds it in place, so the two routes' venvs in
# one checkout share that one file, and each make rebuilds it for its own venv.
$(EXT_OWNER): FORCE
	@[ "$$(cat $@ 2>/dev/null)" = "$(abspath $(VENV))" ] || echo "$(abspath $(VENV))" > $@

# The package itself, with its C++ extension built against the venv's torch.
$(EXT): $(STAMP) $(TORCH_VERSION) $(EXT_OWNER) $(EXT_SRC)
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
