"""Compile-only guard of the CUDA sources, for a CPU torch (the TORCH=cpu route).

tools/check_cuda_compile.sh compiles every ops/cuda/*.cu and *.cpp with nvcc (sm_80, sm_90)
against the installed torch's headers and fails naming the file that does not compile.
Skipped where no nvcc exists, and where the extension was built with its CUDA kernels: that
build compiled and linked them (tests/test_environment.py).
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

from involution_mm.ops.involution import HAS_EXTENSION

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'check_cuda_compile.sh')


def _find_nvcc():
    cuda_home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')
    if cuda_home and osp.isfile(osp.join(cuda_home, 'bin', 'nvcc')):
        return osp.join(cuda_home, 'bin', 'nvcc')
    return shutil.which('nvcc')


NVCC = _find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason='nvcc (the CUDA toolkit) is not installed; '
                                'the compile-only check of ops/cuda needs it')


def _run(*args):
    env = dict(os.environ, PYTHON=sys.executable, NVCC=NVCC)
    return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
@needs_nvcc
@pytest.mark.skipif(
    HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key('involution_mm::involution',
                                                                     'CUDA'),
    reason='the extension was built with its CUDA kernels, which compiled and linked them')
def test_cuda_sources_compile():
    proc = _run()
    assert proc.returncode == 0, f'CUDA sources do not compile:\n{proc.stdout}\n{proc.stderr}'
    for name in ('involution_cuda.cpp', 'involution_forward.cu', 'involution_backward.cu'):
        assert f'ok     ops/cuda/{name}' in proc.stdout, proc.stdout


@needs_nvcc
def test_check_reports_a_broken_file(tmp_path):
    # The guard must fail, and name the file, when a source does not compile.
    broken = tmp_path / 'broken_kernel.cu'
    broken.write_text('__global__ void k(float* p) { p[0] = undefined_symbol; }\n')
    proc = _run(str(broken))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'FAILED' in proc.stdout and 'broken_kernel.cu' in proc.stderr
    assert 'undefined_symbol' in proc.stdout  # the compiler's message is shown
