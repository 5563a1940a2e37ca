#!/usr/bin/env bash
# The whole GPU check in one command, for a short lease of a bare GPU machine (torch with CUDA,
# nvcc, pytest; no OpenMMLab package, no network). Run tools/gpu_check/prepare.sh first where
# the registries are reachable; its wheels travel with the tree.
#
# Usage: tools/gpu_check/run.sh OUT_DIR
#
# Stages, each with its own time budget (seconds, on the GPU machine); a stage that fails or
# runs out of time does not stop the later ones:
#   environment       30  machine, driver, torch and CUDA versions -> environment.json
#   wheels            30  installs the prepared wheels into a temporary target (no network)
#   build            240  builds the extension (CUDA kernels for this device's architecture
#                         when there is a GPU) in a temporary copy of the sources, all cores
#   op_tests         150  GPU: tests/test_involution_cuda.py with INVOLUTION_REQUIRE_CUDA=1;
#                         no GPU: tests/test_involution_op.py with torch and pytest alone
#   benchmark_op_*    45  tools/benchmark_op.py --device cuda, float32 / float16 / bfloat16
#   benchmark_model_* 60  tools/benchmark_model.py --device cuda: RedNet-50 vs ResNet-50,
#                         inference and training step, batch 32 at 224x224, float32 / AMP
#   summary           15  summary.md: every stage, parity per dtype, the benchmark figures
# A stage gets at most what is left of the whole run's budget (GPU_CHECK_TOTAL, default 465 s,
# less 15 s kept for the summary), so the run stays under 8 minutes; stages that find nothing
# left are reported as skipped. Without a GPU the GPU stages are reported as skipped, with the
# reason, and the build and op-test budgets are 900 s each and the total 2400 s (a 2-core
# machine builds the three CPU kernel builds slowly).
#
# Everything lands in OUT_DIR: <stage>.log, stages.tsv, environment.json, op_tests.xml, the
# benchmark JSONs, summary.md and summary.json.
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default gpu_check_wheels),
# AMP_DTYPE of the AMP model run (default float16), GPU_CHECK_TOTAL (seconds, see above).
# Exit status: 0 if no stage failed (stages skipped for want of a GPU or of a failed earlier
# stage count as passed, those the total budget left out as failed), 1 otherwise, 2 on bad usage.
set -u

if [[ $# -ne 1 ]]; then
  echo "usage: tools/gpu_check/run.sh OUT_DIR" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/gpu_check_wheels}"
AMP_DTYPE="${AMP_DTYPE:-float16}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/src"
SITE="$WORK/site"
export ROOT OUT PYTHON WHEELS SRC SITE PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

printf 'stage\tstatus\tseconds\tbudget\tdetail\n' > "$OUT/stages.tsv"
FAILED=0

record() {  # name status seconds budget detail
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT/stages.tsv"
  printf 'gpu_check: %-26s %-8s %5ss  %s\n' "$1" "$2" "$3" "$5"
}

# stage NAME BUDGET COMMAND...: runs COMMAND (a program or one of the exported functions
# below) with a time limit, its output in NAME.log.
stage() {
  local name="$1" budget="$2" start=$SECONDS rc
  shift 2
  local left=$((TOTAL - SECONDS))
  [[ "$name" != summary ]] && left=$((left - 15))
  if (( left < 5 )); then
    skip "$name" "the run's ${TOTAL} s total budget is spent"
    FAILED=1
    return 1
  fi
  (( budget > left )) && budget=$left
  timeout --kill-after=10 "$budget" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    record "$name" ok "$took" "$budget" ""
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    record "$name" timeout "$took" "$budget" "over its ${budget} s budget; see $name.log"
    FAILED=1
  else
    record "$name" failed "$took" "$budget" "exit $rc; see $name.log: $(tail -n 1 "$OUT/$name.log" | cut -c1-160)"
    FAILED=1
  fi
  return $rc
}

skip() {  # name reason
  record "$1" skipped 0 - "$2"
}

HAS_GPU="$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null)"
if [[ -z "$HAS_GPU" ]]; then
  echo "gpu_check: cannot import torch with $PYTHON" >&2
  exit 2
fi
NO_GPU="no CUDA device (torch.cuda.is_available() is False with $($PYTHON -c 'import torch; print(torch.__version__)'))"
export HAS_GPU
if [[ "$HAS_GPU" == 1 ]]; then
  BUILD_BUDGET=240; TEST_BUDGET=150; TOTAL="${GPU_CHECK_TOTAL:-465}"
else
  BUILD_BUDGET=900; TEST_BUDGET=900; TOTAL="${GPU_CHECK_TOTAL:-2400}"
fi

# ---- environment
environment() {
  cd "$ROOT" && "$PYTHON" - "$OUT/environment.json" <<'PY'
import json, os, platform, subprocess, sys
import torch
info = dict(python=sys.version.split()[0], executable=sys.executable, torch=torch.__version__,
            torch_cuda=torch.version.cuda, platform=platform.platform(),
            cpu_cores=os.cpu_count(), cuda_available=torch.cuda.is_available())
try:
    info['cpu'] = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                       if line.startswith('model name'))
except (OSError, StopIteration):
    info['cpu'] = platform.processor()
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                capability='%d.%d' % (props.major, props.minor),
                gpu_memory_gib=props.total_memory / 2 ** 30,
                multiprocessors=props.multi_processor_count,
                cudnn=torch.backends.cudnn.version())
for cmd in (['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.max.sm',
             '--format=csv,noheader'], ['nvcc', '--version']):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        info[cmd[0]] = out.splitlines()[-1] if out else ''
    except (OSError, subprocess.TimeoutExpired) as err:
        info[cmd[0]] = f'unavailable: {err}'
json.dump(info, open(sys.argv[1], 'w'), indent=1)
print(json.dumps(info, indent=1))
PY
}
export -f environment
stage environment 30 environment

# ---- wheels
install_wheels() {
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "no wheels in $WHEELS: run tools/gpu_check/prepare.sh where the registries are reachable"
    return 1
  fi
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "${wheels[@]}" && ls "$SITE"
}
export -f install_wheels
stage wheels 30 install_wheels
WHEELS_OK=$?

# ---- build
build() {
  mkdir -p "$SRC"
  (cd "$ROOT" && tar -cf - --exclude='*.so' --exclude=__pycache__ --exclude=build \
     setup.py pyproject.toml requirements.txt involution_mm ops tests tools configs) \
    | tar -C "$SRC" -xf - || return 1
  cd "$SRC" || return 1
  local arch=""
  if [[ "$HAS_GPU" == 1 ]]; then
    arch="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
    export TORCH_CUDA_ARCH_LIST="$arch" FORCE_CUDA=1
  else
    # Without a GPU the kernels could not run here; the project's own build links them.
    export FORCE_CUDA=0
  fi
  echo "building with $(nproc) jobs${arch:+ for sm_${arch/./}}"
  MAX_JOBS="$(nproc)" "$PYTHON" setup.py build_ext --inplace || return 1
  PYTHONPATH="$SRC" "$PYTHON" - "$HAS_GPU" <<'PY'
import sys
import torch
import involution_mm.ops as ops
cuda = torch._C._dispatch_has_kernel_for_dispatch_key('involution_mm::involution', 'CUDA')
print(f'extension loaded: {ops.HAS_EXTENSION}; CPU kernels: '
      f'{torch.ops.involution_mm.cpu_kernel_isa()}; CUDA kernels: {cuda}')
sys.exit(0 if ops.HAS_EXTENSION and (cuda or sys.argv[1] != '1') else 1)
PY
}
export -f build
stage build "$BUILD_BUDGET" build
BUILD_OK=$?

# ---- op tests
run_op_tests() {
  cd "$SRC" || return 1
  local tests=tests/test_involution_op.py path="$SRC"
  if [[ "$HAS_GPU" == 1 ]]; then
    tests=tests/test_involution_cuda.py
    path="$SRC:$SITE"  # the Involution layer's autocast test needs mmcv-lite
  fi
  # -o addopts: pyproject's --timeout needs pytest-timeout, which a bare image may lack
  PYTHONPATH="$path" INVOLUTION_REQUIRE_CUDA="$HAS_GPU" "$PYTHON" -m pytest -q -rs \
    -p no:cacheprovider -o addopts= --junitxml="$OUT/op_tests.xml" "$tests"
}
export -f run_op_tests
if [[ $BUILD_OK -eq 0 ]]; then
  stage op_tests "$TEST_BUDGET" run_op_tests
else
  skip op_tests "the build failed"
fi

# ---- benchmarks (GPU only)
for dtype in float32 float16 bfloat16; do
  name="benchmark_op_$dtype"
  if [[ "$HAS_GPU" != 1 ]]; then skip "$name" "$NO_GPU"; continue; fi
  if [[ $BUILD_OK -ne 0 ]]; then skip "$name" "the build failed"; continue; fi
  stage "$name" 45 env PYTHONPATH="$SRC" "$PYTHON" "$SRC/tools/benchmark_op.py" --device cuda \
    --dtype "$dtype" --repeats 7 --out "$OUT/op_cuda_$dtype.json"
done

for precision in float32 amp; do
  name="benchmark_model_$precision"
  if [[ "$HAS_GPU" != 1 ]]; then skip "$name" "$NO_GPU"; continue; fi
  if [[ $BUILD_OK -ne 0 || $WHEELS_OK -ne 0 ]]; then
    skip "$name" "needs the build and the wheels (mmcv-lite, mmengine)"; continue
  fi
  amp=()
  [[ "$precision" == amp ]] && amp=(--amp "$AMP_DTYPE")
  stage "$name" 60 env PYTHONPATH="$SRC:$SITE" "$PYTHON" "$SRC/tools/benchmark_model.py" \
    --device cuda "${amp[@]}" --scenarios infer_bs32 train_bs32 --models rednet50 resnet50 \
    --repeats 7 --no-plot --out "$OUT/model_cuda_$precision.json"
done

# ---- summary
stage summary 15 "$PYTHON" "$ROOT/tools/gpu_check/summarize.py" "$OUT"
cat "$OUT/summary.md" 2>/dev/null
exit $FAILED
