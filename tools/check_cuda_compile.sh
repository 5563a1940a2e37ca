#!/usr/bin/env bash
# Compile-only check of the CUDA sources (ops/cuda/*.cu, ops/cuda/*.cpp) with nvcc, against the
# headers of the installed torch -- which may be a CPU build: the sources include only c10/cuda
# headers, and the one generated header a CPU wheel lacks (c10/cuda/impl/cuda_cmake_macros.h)
# is stubbed with an empty file in a temporary include directory. No object is kept and no GPU
# is needed; this is how CI on GPU-less machines guards the CUDA kernels.
#
# Usage: tools/check_cuda_compile.sh [source ...]      (default: every ops/cuda/*.cu and *.cpp)
# Environment:
#   PYTHON       python whose torch provides the headers (default: .venv/bin/python, else python3)
#   NVCC         nvcc to use (default: $CUDA_HOME/bin/nvcc, else nvcc on PATH)
#   CUDA_ARCHS   space-separated SM versions to build for (default: "80 90")
#   JOBS         parallel compilations (default: number of CPUs)
#   PTXAS_VERBOSE=1  print registers / spills of every kernel (nvcc -Xptxas -v)
# Exit status: 0 if every file compiles, 1 if any fails (each failure is named with its log),
# 2 if nvcc or torch cannot be found.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${NVCC:-}" ]]; then
  if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    NVCC="$CUDA_HOME/bin/nvcc"
  else
    NVCC="$(command -v nvcc || true)"
  fi
fi
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "check_cuda_compile: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)" >&2
  exit 2
fi

INCLUDES="$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print("\n".join(c.include_paths()))')" || {
  echo "check_cuda_compile: cannot import torch with $PYTHON" >&2
  exit 2
}
PY_INCLUDE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
CXX11_ABI="$("$PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"

STUB="$(mktemp -d "${TMPDIR:-/tmp}/involution_cuda_check.XXXXXX")"
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/c10/cuda/impl"
: > "$STUB/c10/cuda/impl/cuda_cmake_macros.h"

INC_FLAGS=(-I"$ROOT/ops" -I"$STUB")
while IFS= read -r dir; do [[ -n "$dir" ]] && INC_FLAGS+=(-isystem "$dir"); done <<< "$INCLUDES"
INC_FLAGS+=(-isystem "$PY_INCLUDE")

GENCODE=()
for arch in ${CUDA_ARCHS:-80 90}; do GENCODE+=(-gencode "arch=compute_${arch},code=sm_${arch}"); done

# The flags of setup.py's CUDAExtension plus those torch's BuildExtension adds (its C++20
# standard: ATen refuses C++17 from torch 2.14 on).
COMMON=(-std=c++20 -O3 -DWITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
        "-D_GLIBCXX_USE_CXX11_ABI=$CXX11_ABI" -Xcompiler -fPIC)
CU_FLAGS=(--use_fast_math --expt-relaxed-constexpr
          -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
          -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
          -Werror cross-execution-space-call "${GENCODE[@]}")
if [[ "${PTXAS_VERBOSE:-0}" == "1" ]]; then CU_FLAGS+=(-Xptxas -v); fi

if [[ $# -gt 0 ]]; then
  SOURCES=("$@")
else
  shopt -s nullglob
  SOURCES=(ops/cuda/*.cu ops/cuda/*.cpp)
fi
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "check_cuda_compile: no CUDA sources found under ops/cuda" >&2
  exit 1
fi

JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
echo "check_cuda_compile: $("$NVCC" --version | tail -n 1); archs: ${CUDA_ARCHS:-80 90}; ${#SOURCES[@]} files, $JOBS jobs"

compile() {  # $1 = source, $2 = log
  local src="$1" log="$2" flags=("${COMMON[@]}")
  if [[ "$src" == *.cu ]]; then flags+=("${CU_FLAGS[@]}"); fi
  local start=$SECONDS
  if "$NVCC" "${flags[@]}" "${INC_FLAGS[@]}" -c "$src" -o /dev/null > "$log" 2>&1; then
    echo "  ok     $src ($((SECONDS - start)) s)"
    return 0
  fi
  echo "  FAILED $src ($((SECONDS - start)) s)"
  return 1
}

declare -A PIDS=()
FAILED=()
i=0
for src in "${SOURCES[@]}"; do
  # Keep at most $JOBS compilations running.
  while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n 2>/dev/null || true; done
  log="$STUB/log.$i"
  compile "$src" "$log" &
  PIDS[$!]="$src|$log"
  i=$((i + 1))
done
for pid in "${!PIDS[@]}"; do
  if ! wait "$pid"; then FAILED+=("${PIDS[$pid]}"); fi
done
# Print logs: failures in full, warnings of successful files too (they may hide real bugs).
for pid in "${!PIDS[@]}"; do
  entry="${PIDS[$pid]}"; src="${entry%%|*}"; log="${entry#*|}"
  if [[ -s "$log" ]]; then
    echo "---- nvcc output for $src ----"
    cat "$log"
  fi
done

if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "check_cuda_compile: ${#FAILED[@]} file(s) failed to compile:" >&2
  for entry in "${FAILED[@]}"; do echo "  ${entry%%|*}" >&2; done
  exit 1
fi
echo "check_cuda_compile: all ${#SOURCES[@]} CUDA sources compile"
exit 0
