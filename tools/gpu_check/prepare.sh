#!/usr/bin/env bash
# Gathers, on a machine that reaches the package registries, the pure-Python wheels that
# tools/gpu_check/run.sh installs on a bare GPU image (which has torch, numpy, pyyaml, rich,
# matplotlib, pillow, opencv and pytest, but no OpenMMLab package and no network).
#
# Usage: tools/gpu_check/prepare.sh [WHEEL_DIR]      (default: gpu_check_wheels, git-ignored)
# Exit status: 0 when every wheel is there, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/gpu_check_wheels}"
PYTHON="${PYTHON:-python3}"
LIMIT_MIB=20

pin() {  # the version requirements.txt pins for package $1
  grep -E "^$1==" "$ROOT/requirements.txt" | head -n 1 | cut -d= -f3
}
MMENGINE="$(pin mmengine)"
MMCV="$(pin mmcv)"
if [[ -z "$MMENGINE" || -z "$MMCV" ]]; then
  echo "prepare: requirements.txt pins no mmengine or mmcv version" >&2
  exit 1
fi
# mmcv-lite is mmcv without compiled ops (ConvModule, norm builders, fuse_conv_bn); the others
# are what mmengine and mmcv-lite need beyond a bare GPU image, pinned so that every check
# runs the same code.
PACKAGES=("mmengine==$MMENGINE" "mmcv-lite==$MMCV" addict==2.4.0 termcolor==3.3.0 yapf==0.43.0
          platformdirs==4.14.9)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$DEST" "${PACKAGES[@]}"

status=0
for wheel in "$DEST"/*.whl; do
  # Pure-Python wheels only: they install on the GPU image's Python whatever its version.
  if [[ "$wheel" != *-none-any.whl ]]; then
    echo "prepare: $(basename "$wheel") is not a pure-Python wheel" >&2
    status=1
  fi
done
count="$(ls "$DEST"/*.whl | wc -l)"
if [[ "$count" -ne ${#PACKAGES[@]} ]]; then
  echo "prepare: expected ${#PACKAGES[@]} wheels in $DEST, found $count" >&2
  status=1
fi
size_kib="$(du -sk "$DEST" | cut -f1)"
if (( size_kib > LIMIT_MIB * 1024 )); then
  echo "prepare: $DEST holds $((size_kib / 1024)) MiB, more than the ${LIMIT_MIB} MiB a device call carries comfortably" >&2
  status=1
fi
echo "prepare: $count wheels, $((size_kib)) KiB in $DEST"
exit $status
