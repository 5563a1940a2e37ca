"""The environment the Makefile builds: mmcv's compiled ops built for this torch, and the
extension linked with its CUDA kernels wherever torch is a CUDA build (no GPU needed)."""
import os.path as osp
import sys

import pytest
import torch

from involution_mm.ops.involution import HAS_EXTENSION

OPS = ('involution', 'involution_grad_input', 'involution_grad_weight')


@pytest.mark.skipif(torch.version.cuda is None,
                    reason=f'torch {torch.__version__} is a CPU build (the TORCH=cpu route): '
                           'the extension has no CUDA kernels to link')
def test_cuda_kernels_are_linked_and_registered():
    assert HAS_EXTENSION, 'the involution_mm extension did not load'
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(
        f'involution_mm::{op}', 'CUDA')]
    assert not missing, (f'torch {torch.__version__} is a CUDA build, but the extension has no '
                         f'CUDA kernel for {missing}: it was built without CUDA_HOME/nvcc')


def test_mmcv_was_built_for_this_torch():
    mark = osp.join(sys.prefix, '.mmcv-built-for-torch')
    if not osp.isfile(mark):
        pytest.skip(f'mmcv was not installed by tools/install_mmcv.sh into {sys.prefix}')
    with open(mark) as f:
        built_for = f.read().strip()
    assert built_for == torch.__version__, (
        f'mmcv was built against torch {built_for}, this is torch {torch.__version__}: '
        'run make env to rebuild it')


def test_mmcv_compiled_ops_run():
    ops = pytest.importorskip('mmcv.ops', reason='mmcv with compiled ops is not installed')
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]

    # 2x2 bins over a 4x4 ramp: each bin's value is the mean of its sampling points
    feature = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    # positional: mmcv's autograd Function takes no keywords
    pooled = ops.roi_align(feature, rois, (2, 2), 1.0, 2, 'avg', True)
    expected = torch.nn.functional.avg_pool2d(feature, 2)
    torch.testing.assert_close(pooled, expected)
