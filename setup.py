"""Installs involution_mm and builds its C++ (and, with a CUDA torch, CUDA) extension.

Build with torch already installed and no build isolation, so that pip never fetches
another torch:  pip install -e . --no-build-isolation
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup

try:
    import torch
except ImportError as err:
    raise SystemExit(
        'involution_mm builds its extension against the installed torch, which was not found '
        f'({err}). Install torch first, then: pip install -e . --no-build-isolation') from err


def toolkit_root_of_nvcc():
    """The root of the CUDA toolkit that ``nvcc`` on PATH runs, as nvcc itself reports it.

    torch guesses CUDA_HOME as the folder above nvcc's; where nvcc is a wrapper script (e.g.
    /usr/local/bin/nvcc) that folder holds no CUDA headers and the build fails late.
    """
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None
    try:
        dry = subprocess.run([nvcc, '--dryrun', '-c', '-x', 'cu', os.devnull, '-o', os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'^#\$ TOP=(.+)$', dry.stdout + dry.stderr, re.MULTILINE)
    return os.path.normpath(match.group(1).strip()) if match else None


def has_cuda_headers(root):
    return root is not None and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h'))


# Decided before torch.utils.cpp_extension reads the environment for its CUDA_HOME.
if torch.version.cuda and not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')):
    _root = toolkit_root_of_nvcc()
    if has_cuda_headers(_root):
        os.environ['CUDA_HOME'] = _root

from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension, CppExtension,  # noqa: E402
                                       CUDAExtension)

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version():
    scope = {}
    with open(os.path.join(ROOT, 'involution_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def want_cuda():
    """CUDA kernels need a CUDA build of torch and a toolkit; FORCE_CUDA=1 insists, FORCE_CUDA=0
    builds the CPU extension only."""
    if os.environ.get('FORCE_CUDA') == '0':
        return False
    force = os.environ.get('FORCE_CUDA') == '1'
    if not (force or (torch.version.cuda is not None and CUDA_HOME is not None)):
        return False
    if not has_cuda_headers(CUDA_HOME):
        problem = (f'CUDA_HOME={CUDA_HOME} holds no include/cuda_runtime.h; set CUDA_HOME to '
                   'the root of the CUDA toolkit (e.g. /usr/local/cuda)')
        if force:
            raise SystemExit(f'involution_mm: FORCE_CUDA=1, but {problem}')
        print(f'involution_mm: {problem}')
        return False
    return True


def default_cuda_archs():
    """With no GPU visible torch finds no architecture to build for (and fails): build for
    every one this torch supports, the last also as PTX for GPUs newer than the toolkit."""
    if os.environ.get('TORCH_CUDA_ARCH_LIST') or torch.cuda.device_count() > 0:
        return
    archs = [a[len('sm_'):] for a in torch.cuda.get_arch_list() if a.startswith('sm_')]
    os.environ['TORCH_CUDA_ARCH_LIST'] = ';'.join(f'{a[:-1]}.{a[-1]}' for a in archs) + '+PTX'
    print(f'involution_mm: no GPU visible; TORCH_CUDA_ARCH_LIST={os.environ["TORCH_CUDA_ARCH_LIST"]}')


def make_extension():
    sources = sorted(glob.glob('ops/*.cpp')) + sorted(glob.glob('ops/cpu/*.cpp'))
    # -fopenmp: ATen is built with OpenMP, and at::parallel_for (a header template) runs its
    # body serially in a translation unit compiled without it. The extension then uses the
    # libgomp that torch has already loaded (same soname).
    # No -std: BuildExtension adds the language standard the installed torch's headers need
    # (C++20 for torch 2.13; ATen refuses C++17 from torch 2.14 on).
    cxx_flags = ['-O3', '-fopenmp']
    if want_cuda():
        sources += sorted(glob.glob('ops/cuda/*.cpp')) + sorted(glob.glob('ops/cuda/*.cu'))
        default_cuda_archs()
        return CUDAExtension(
            'involution_mm._C', sources,
            define_macros=[('WITH_CUDA', None)],
            extra_compile_args={'cxx': cxx_flags,
                                'nvcc': ['-O3', '--use_fast_math',
                                         '--expt-relaxed-constexpr']},
            extra_link_args=['-fopenmp'])
    print('involution_mm: building the CPU extension only '
          f'(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}; '
          'FORCE_CUDA=1 insists)')
    return CppExtension('involution_mm._C', sources, extra_compile_args={'cxx': cxx_flags},
                        extra_link_args=['-fopenmp'])


setup(
    name='involution_mm',
    version=read_version(),
    description='Involution (CVPR 2021) for OpenMMLab 2.x: native CPU/CUDA op, RedNet, '
                'involution FPN and heads',
    packages=find_packages(include=['involution_mm', 'involution_mm.*']),
    python_requires='>=3.9',
    # torch, mmcv and the rest are pinned in requirements.txt and installed first (Makefile):
    # declaring them here would let pip replace the installed torch.
    install_requires=[],
    ext_modules=[make_extension()],
    cmdclass={'build_ext': BuildExtension},
    zip_safe=False,
)
