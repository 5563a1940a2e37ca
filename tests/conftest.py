"""Shared fixtures: tiny synthetic datasets and how to run the tools on them."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Inductor's FX-graph cache key leaves out the vector ISA it generated C++ for, which
# ATEN_CPU_CAPABILITY picks: a graph cached by a run on the machine's own ISA (AVX-512 code)
# is then reused under ATEN_CPU_CAPABILITY=avx2 or default and fails to compile ("'at::vec'
# has not been declared", "expected primary-expression before 'float'"). A forced ISA gets
# a cache of its own (tests/test_compile.py::test_a_forced_isa_has_its_own_inductor_cache).
if os.environ.get('ATEN_CPU_CAPABILITY') and 'TORCHINDUCTOR_CACHE_DIR' not in os.environ:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = (
        f"{default_cache_dir()}_{os.environ['ATEN_CPU_CAPABILITY']}")
DET_DEMO = 'configs/demo/mask_rcnn_rednet50_fpn_synthetic.py'
SEG_DEMO = 'configs/demo/fpn_rednet50_synthetic.py'
CLS_DEMO = 'configs/demo/rednet26_synthetic_cls.py'


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """Tiny synthetic COCO (8 train, 4 val, 128x128) and Cityscapes (6 train, 3 val,
    256x128) datasets, made once per session; returns their roots."""
    from involution_mm.datasets import make_synthetic_cityscapes, make_synthetic_coco
    root = tmp_path_factory.mktemp('synthetic_data')
    coco = str(root / 'synthetic_coco')
    city = str(root / 'synthetic_cityscapes')
    make_synthetic_coco(coco, num_train=8, num_val=4, size=128, seed=1)
    make_synthetic_cityscapes(city, num_train=6, num_val=3, seed=1)
    return dict(coco=coco + '/', cityscapes=city + '/')


@pytest.fixture(scope='session')
def synthetic_imagenet(tmp_path_factory):
    """A small synthetic ImageNet-format dataset (4 classes, 512 train and 128 val images
    of 32x32, the demo's image size), made once per session; returns its root."""
    from involution_mm.datasets import make_synthetic_imagenet
    root = str(tmp_path_factory.mktemp('synthetic_imagenet'))
    make_synthetic_imagenet(root, num_train=512, num_val=128, seed=1)
    return root + '/'


@pytest.fixture(scope='session')
def mmpretrain_models():
    """Skips the test where ``mmpretrain.models`` does not import (it imports torchvision,
    which has no build for the CPU torch of the development machine)."""
    try:
        import mmpretrain.models  # noqa: F401
    except Exception as err:
        pytest.skip(f'mmpretrain.models does not import here ({type(err).__name__}: {err}); '
                    'it needs torchvision')


def det_data_options(data):
    """--cfg-options that point the Mask R-CNN demo config at ``data['coco']``, with small
    batches."""
    root = data['coco']
    ann = root + 'annotations/instances_val2017.json'
    return [f'train_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', f'test_evaluator.ann_file={ann}',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'test_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'test_dataloader.persistent_workers=False']


def seg_data_options(data):
    root = data['cityscapes']
    return [f'train_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'test_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'test_dataloader.persistent_workers=False']


def cls_data_options(root):
    """--cfg-options that point the classification demo config at ``root``."""
    return [f'train_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}',
            'train_dataloader.num_workers=0', 'test_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'test_dataloader.persistent_workers=False']


def schedule_options(iters, ckpt_interval=None, log_interval=1):
    return [f'train_cfg.max_iters={iters}',
            f'default_hooks.checkpoint.interval={ckpt_interval or iters}',
            f'default_hooks.logger.interval={log_interval}']


def tool_env(**extra):
    env = dict(os.environ)
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    env['PYTHONUNBUFFERED'] = '1'
    env.update(extra)
    return env


def run_tool(args, timeout=600, **env):
    """Runs ``python <args>`` in the repository root; returns the CompletedProcess with
    stdout and stderr merged into ``.stdout``."""
    return subprocess.run([sys.executable] + list(args), cwd=ROOT, env=tool_env(**env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def tools():
    """Helpers for the tool tests (a fixture, so that no test imports another test file)."""
    from types import SimpleNamespace
    return SimpleNamespace(
        ROOT=ROOT, DET_DEMO=DET_DEMO, SEG_DEMO=SEG_DEMO, CLS_DEMO=CLS_DEMO,
        det_data_options=det_data_options, seg_data_options=seg_data_options,
        cls_data_options=cls_data_options, schedule_options=schedule_options,
        run_tool=run_tool, tool_env=tool_env, free_port=free_port)
