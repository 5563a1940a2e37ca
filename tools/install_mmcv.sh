#!/usr/bin/env bash
# Installs mmcv with its compiled ops into a venv, built from the pinned sdist against that
# venv's torch. No mmcv wheel exists for our torch, and pip's own wheel cache is keyed by the
# sdist only, so it would hand a wheel built for one torch to another: the wheels built here
# are kept per torch version instead, and a venv records which torch its mmcv was built for.
#
# Usage: tools/install_mmcv.sh VENV_PYTHON      (from the repository root; reads requirements.txt)
# Environment: MAX_JOBS (parallel compilations), MMCV_WHEELHOUSE (default ~/.cache/involution_mm/mmcv)
set -euo pipefail

PY="$1"
SPEC="$(grep -E '^mmcv==' requirements.txt)"
VERSION="${SPEC#mmcv==}"
SDIST_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
TORCH="$("$PY" -c 'import torch; print(torch.__version__)')"
WHEELS="${MMCV_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/involution_mm/mmcv}/$VERSION-torch$TORCH"
MARK="$("$PY" -c 'import sys; print(sys.prefix)')/.mmcv-built-for-torch"

if [[ "$VERSION" != 2.1.0 ]]; then
  echo "install_mmcv: requirements.txt pins $SPEC; this script knows the sdist of mmcv 2.1.0 only" >&2
  exit 1
fi

if ! compgen -G "$WHEELS/mmcv-$VERSION-*.whl" > /dev/null; then
  SRC="$(mktemp -d "${TMPDIR:-/tmp}/mmcv-src.XXXXXX")"
  trap 'rm -rf "$SRC"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "$SPEC" -d "$SRC"
  echo "$SDIST_SHA256  $SRC/mmcv-$VERSION.tar.gz" | sha256sum --check --quiet
  tar -xzf "$SRC/mmcv-$VERSION.tar.gz" -C "$SRC"
  # mmcv 2.1.0 hard-codes -std=c++17 for its ops; torch 2.14's headers require C++20.
  sed -i 's/-std=c++17/-std=c++20/g' "$SRC/mmcv-$VERSION/setup.py"
  grep -q -- '-std=c++20' "$SRC/mmcv-$VERSION/setup.py"
  echo "install_mmcv: building mmcv $VERSION with its ops against torch $TORCH (10-30 min)"
  MMCV_WITH_OPS=1 "$PY" -m pip wheel --quiet --no-build-isolation --no-deps \
    "$SRC/mmcv-$VERSION" -w "$SRC/wheel"
  mkdir -p "$WHEELS"
  mv "$SRC"/wheel/mmcv-*.whl "$WHEELS/"
fi

"$PY" -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/mmcv-"$VERSION"-*.whl
echo "$TORCH" > "$MARK"
