"""1x1 convolutions as one GEMM on CPU.

On CPU with more than one thread, PyTorch sends every conv2d to oneDNN, whose 1x1 convs on
NCHW tensors reorder the input to a blocked layout and back on each call; at RedNet's
shapes that makes them up to several times slower than the same product as an MKL matrix
multiply (with one thread PyTorch already uses a GEMM). RedNet has four 1x1 convs per
block, two of them in the involution's kernel branch.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv1x1(x, weight, bias=None):
    """``F.conv2d(x, weight, bias)`` for a (O, C, 1, 1) weight: a GEMM for contiguous NCHW
    CPU input, ``F.conv2d`` otherwise (GPU, channels_last, mismatched shapes, which then get
    conv2d's own error)."""
    if not (x.device.type == 'cpu' and x.dim() == 4 and weight.dim() == 4
            and weight.shape[1:] == (x.shape[1], 1, 1) and x.is_contiguous()):
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    # bmm, not matmul: matmul folds (B, C, HW) into (B*HW, C) through two transposed copies
    out = torch.bmm(weight.view(1, -1, c).expand(b, -1, -1), x.view(b, c, h * w))
    if bias is not None:
        out.add_(bias.to(out.dtype).view(1, -1, 1))  # autocast: the dtype bmm ran in
    return out.view(b, weight.shape[0], h, w)


def pointwise_conv(x, conv):
    """``conv(x)``, through :func:`conv1x1` when ``conv`` is a plain 1x1, stride-1,
    unpadded nn.Conv2d."""
    if (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1):
        return conv1x1(x, conv.weight, conv.bias)
    return conv(x)


def conv_module_forward(module, x):
    """mmcv ConvModule (order conv, norm, act) with its conv through :func:`pointwise_conv`."""
    x = pointwise_conv(x, module.conv)
    if module.with_norm:
        x = module.norm(x)
    if module.with_activation:
        x = module.activate(x)
    return x
