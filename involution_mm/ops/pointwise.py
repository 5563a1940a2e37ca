"""1x1 convolutions as GEMMs on CPU.

On CPU with more than one thread, PyTorch sends every conv2d to oneDNN, whose 1x1 convs on
NCHW tensors reorder the input to a blocked layout and back on each call; at RedNet's
shapes that makes them up to several times slower than the same product as an MKL matrix
multiply (with one thread PyTorch already uses a GEMM), and oneDNN's backward of a stride-2
1x1 conv is slower still. RedNet has four 1x1 convs per block, two of them in the
involution's kernel branch, and a stride-2 one on the shortcut of each stage.

In inference the BN after such a conv (or the bias ``fuse_conv_bn`` folds it into), the
residual add and the ReLU are applied to each tile of the GEMM's output while it is in cache
(:func:`conv_norm_act`), instead of as three more passes over the whole output.
"""
import functools
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module

try:
    from mmengine.utils.dl_utils.parrots_wrapper import SyncBatchNorm as MMEngineSyncBatchNorm
except ImportError:  # the op layer imports with torch alone; then no model builds this BN
    MMEngineSyncBatchNorm = nn.SyncBatchNorm

#: the BNs whose formula this package computes itself; mmengine's SyncBatchNorm (what
#: ``norm_cfg=dict(type='SyncBN')`` builds) changes only the check of the input's dimensions
BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, MMEngineSyncBatchNorm)


def _gemm_applies(x, weight):
    # exported graphs keep the conv: their runtimes fuse it with the BN and ReLU after it
    return (not torch.compiler.is_exporting() and x.device.type == 'cpu' and x.dim() == 4
            and weight.dim() == 4 and weight.shape[1:] == (x.shape[1], 1, 1)
            and x.is_contiguous())


def _folds_batch(batch, in_channels, out_channels, pixels):
    """Whether one (O, C) x (C, B*HW) GEMM beats B GEMMs of (O, C) x (C, HW).

    B GEMMs make the weight gradient as B weight-sized partial products summed afterwards;
    folding the batch costs a transposed copy of the activations instead. At RedNet's last
    stage (7x7 pixels, 512 and 2048 channels) the copies are eight times smaller and folded
    forward+backward takes 0.6x the time; at 14x14 the two forms are even.
    """
    return batch > 1 and 2 * pixels * (in_channels + out_channels) <= in_channels * out_channels


def conv1x1(x, weight, bias=None):
    """``F.conv2d(x, weight, bias)`` for a (O, C, 1, 1) weight: GEMMs for contiguous NCHW
    CPU input, ``F.conv2d`` otherwise (GPU, channels_last, mismatched shapes, which then get
    conv2d's own error)."""
    if not _gemm_applies(x, weight):
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    o = weight.shape[0]
    matrix = weight.reshape(o, c)
    if _folds_batch(b, c, o, h * w):
        out = torch.mm(matrix, x.view(b, c, h * w).transpose(0, 1).reshape(c, b * h * w))
        out = out.view(o, b, h * w).transpose(0, 1).contiguous()
    else:
        # bmm, not matmul: matmul folds (B, C, HW) into (B*HW, C) through two transposed copies
        out = torch.bmm(matrix.expand(b, -1, -1), x.view(b, c, h * w))
    if bias is not None:
        out.add_(bias.to(out.dtype).view(1, -1, 1))  # autocast: the dtype the GEMM ran in
    return out.view(b, o, h, w)


def add_into(accumulate, grad):
    """``grad`` added into ``accumulate`` (overwritten and returned); ``grad`` itself where
    ``accumulate`` is None."""
    return grad if accumulate is None else accumulate.add_(grad)


def _input_grad_gemm(grad_output, matrix, accumulate):
    """``accumulate + conv1x1(grad_output, matrix.t())`` for contiguous ``grad_output``
    (B, O, H, W), an (O, C) ``matrix`` and a contiguous ``accumulate`` (B, C, H, W) of the
    same dtype, computed into ``accumulate``: the GEMM adds its product to what is there
    instead of writing a new tensor for a separate add pass."""
    b, o, h, w = grad_output.shape
    c = matrix.shape[1]
    out = accumulate.view(b, c, h * w)
    if _folds_batch(b, o, c, h * w):
        product = torch.mm(matrix.t(), grad_output.view(b, o, h * w).transpose(0, 1)
                           .reshape(o, b * h * w))
        out.add_(product.view(c, b, h * w).transpose(0, 1))
    else:
        out.baddbmm_(matrix.t().expand(b, -1, -1), grad_output.view(b, o, h * w))
    return accumulate


def conv1x1_backward(grad_output, x, weight, output_mask, accumulate=None):
    """Gradients of ``conv1x1(x, weight, bias)`` w.r.t. x, weight and bias, each computed
    where ``output_mask`` asks for it (None elsewhere), by the same GEMMs as
    :func:`conv1x1`; ``aten.convolution_backward`` where conv1x1 would use conv2d. With
    ``accumulate`` (a tensor of x's shape, which this may overwrite) the x gradient returned
    is ``accumulate`` plus the conv's."""
    if not (_gemm_applies(x, weight) and grad_output.is_contiguous()):
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, x, weight, [weight.shape[0]] if output_mask[2] else None, [1, 1],
            [0, 0], [1, 1], False, [0, 0], 1, list(output_mask))
        if grad_x is not None:
            grad_x = add_into(accumulate, grad_x)
        return grad_x, grad_weight, grad_bias
    b, c, h, w = x.shape
    o = weight.shape[0]
    grad_x = grad_weight = grad_bias = None
    if output_mask[0]:
        matrix = weight.reshape(o, c)
        if (accumulate is not None and accumulate.is_contiguous()
                and accumulate.dtype == grad_output.dtype):
            grad_x = _input_grad_gemm(grad_output, matrix, accumulate)
        else:
            grad_x = add_into(accumulate, conv1x1(grad_output, matrix.t().reshape(c, o, 1, 1)))
    if output_mask[1]:
        if _folds_batch(b, c, o, h * w):
            grad_weight = torch.mm(grad_output.view(b, o, h * w).transpose(0, 1).reshape(o, -1),
                                   x.view(b, c, h * w).transpose(0, 1).reshape(c, -1).t())
        else:
            grad_weight = torch.bmm(grad_output.view(b, o, h * w),
                                    x.view(b, c, h * w).transpose(1, 2)).sum(0)
        grad_weight = grad_weight.view(o, c, 1, 1)
    if output_mask[2]:
        grad_bias = grad_output.sum((0, 2, 3))
    return grad_x, grad_weight, grad_bias


def _without_hooks(module):
    """Whether calling ``module`` would run its forward alone: no hooks on it or on every
    module (the test of ``nn.Module.__call__``'s fast path). Hooks (a FLOPs counter, feature
    extraction, spectral norm's weight update) must see the call, so the GEMM path leaves
    such modules to their own ``__call__``."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks)


def _every_stride_th_pixel(x, stride):
    return x if stride == (1, 1) else x[:, :, ::stride[0], ::stride[1]].contiguous()


@torch.library.custom_op('involution_mm::pointwise_conv_backward', mutates_args=())
def pointwise_conv_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            stride: Sequence[int], output_mask: Sequence[bool]
                            ) -> List[torch.Tensor]:
    """``[grad_x, grad_weight, grad_bias]`` of the 1x1 conv of every ``stride``-th pixel of
    ``x`` (:func:`conv1x1_backward`, in ``grad_output``'s dtype, returned in those of ``x``
    and ``weight``); an empty placeholder where ``output_mask`` is false.

    An op of its own so that under torch.compile the backward reads ``x`` itself, as
    ``convolution_backward`` does: traced, its GEMMs read views of ``x``, which AOTAutograd's
    partitioner may save instead of ``x``, and then it also saves the mask of the ReLU that
    made ``x``, which it would otherwise recompute from ``x``."""
    stride = tuple(stride)
    dtype = grad_output.dtype
    with torch.autocast(x.device.type, enabled=False):
        grad_x, grad_weight, grad_bias = conv1x1_backward(
            grad_output.contiguous(), _every_stride_th_pixel(x, stride).to(dtype),
            weight.to(dtype), list(output_mask))
    if grad_x is not None and stride != (1, 1):
        full = grad_x.new_zeros(x.shape)
        full[:, :, ::stride[0], ::stride[1]] = grad_x
        grad_x = full
    grads = (grad_x, grad_weight, grad_bias)
    dtypes = (x.dtype, weight.dtype, weight.dtype)
    return [x.new_empty(0, dtype=d) if g is None else g.to(d) for g, d in zip(grads, dtypes)]


@pointwise_conv_backward.register_fake
def _(grad_output, x, weight, stride, output_mask):
    shapes = (x.shape, weight.shape, weight.shape[:1])
    return [x.new_empty(shape if needed else 0, dtype=dtype) for shape, needed, dtype in
            zip(shapes, output_mask, (x.dtype, weight.dtype, weight.dtype))]


class _Conv1x1(torch.autograd.Function):
    """:func:`conv1x1` of every stride-th pixel of ``x`` that keeps ``x`` itself for
    backward. Autograd through the GEMMs would keep their operands instead: the strided
    copy, or at few pixels the transposed copy of the folded batch, each a second tensor of
    the values ``x`` (saved by the layer before) already holds."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):
        out = conv1x1(_every_stride_th_pixel(x, stride), weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        ctx.has_bias = bias is not None
        ctx.dtype = out.dtype  # autocast may have run the GEMM in a lower precision
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                ctx.needs_input_grad[2] and ctx.has_bias]
        grads = pointwise_conv_backward(grad_output.to(ctx.dtype), x, weight, ctx.stride, mask)
        return (*[g if needed else None for g, needed in zip(grads, mask)], None)


def pointwise_conv(x, conv):
    """``conv(x)``, through :func:`conv1x1` when ``conv`` is a plain unpadded 1x1
    nn.Conv2d without hooks; a strided one convolves every stride-th pixel."""
    if not (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and _without_hooks(conv)):
        return conv(x)
    if not _gemm_applies(x, conv.weight):
        return conv(x)
    return _Conv1x1.apply(x, conv.weight, conv.bias, conv.stride)


def conv_module_forward(module, x):
    """``module(x)`` for an mmcv ConvModule, as :func:`conv_norm_act` of its layers when it
    runs conv, norm, act in that order with no padding layer and no hooks of its own; in
    float32 eager CPU inference on channels_last input, a conv -> norm -> ReLU as one oneDNN
    op (:func:`onednn_conv_relu`)."""
    if (module.order != ('conv', 'norm', 'act') or module.with_explicit_padding
            or not _without_hooks(module)):
        return module(x)
    # eager_cpu_inference first: dynamo does not trace torch.backends.mkldnn.is_available
    if (eager_cpu_inference(x, (torch.float32, )) and torch.backends.mkldnn.is_available()
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        onednn = onednn_conv_relu(module)
        if onednn is not None:
            return onednn(x)
    return conv_norm_act(x, module.conv, module.norm if module.with_norm else None,
                         module.activate if module.with_activation else None)


def onednn_conv_relu(module):
    """For an mmcv ConvModule conv -> norm -> ReLU: a function computing it as one oneDNN
    convolution, the norm folded into the weights and the ReLU as oneDNN's post-op; None
    where the module is another configuration or has hooks."""
    if not (module.order == ('conv', 'norm', 'act') and not module.with_explicit_padding
            and module.with_activation and type(module.activate) is nn.ReLU
            and type(module.conv) is nn.Conv2d and module.conv.padding_mode == 'zeros'
            and not isinstance(module.conv.padding, str)
            and all(map(_without_hooks, (module, module.conv, module.activate)))):
        return None
    conv = module.conv
    scale_shift = inference_scale_shift(module.norm if module.with_norm else None, conv.bias)
    if scale_shift is None:
        return None
    scale, shift = scale_shift
    weight = conv.weight if scale is None else conv.weight * scale.view(-1, 1, 1, 1)
    return lambda x: torch.ops.mkldnn._convolution_pointwise(
        x, weight, shift, conv.padding, conv.stride, conv.dilation, conv.groups, 'relu', [],
        '')


def conv_norm_act(x, conv, norm=None, act=None, residual=None):
    """``act(norm(conv(x)) + residual)``, each of ``norm``, ``act`` and ``residual`` optional.

    In inference (no grad, no autocast, not compiling or exporting) on contiguous float32/64
    CPU input, a plain 1x1 ``conv`` whose ``norm`` is an eval-mode BN or ``nn.Identity`` (what
    ``fuse_conv_bn`` leaves) and whose ``act`` is an ``nn.ReLU``, none with hooks, runs as one
    ``torch.ops.involution_mm.conv1x1_epilogue``: the norm as a per-channel scale and shift,
    the residual and ReLU applied to each tile of the GEMM's output. Otherwise the layers run
    one by one, the conv through :func:`pointwise_conv`."""
    epilogue = _epilogue(x, conv, norm, act, residual)
    if epilogue is not None:
        scale, shift = epilogue
        return torch.ops.involution_mm.conv1x1_epilogue(
            _every_stride_th_pixel(x, conv.stride), conv.weight, scale, shift, residual,
            act is not None)
    out = pointwise_conv(x, conv)
    if norm is not None:
        out = norm(out)
    if residual is not None:
        out = out + residual
    return out if act is None else act(out)


@functools.cache
def _has_epilogue_kernel():
    from .involution import HAS_EXTENSION  # importing it loads the extension
    return HAS_EXTENSION


def eager_cpu_inference(x, dtypes):
    """Whether ``x`` is a 4-d CPU tensor of one of ``dtypes`` in eager inference: no grad, no
    autocast, not compiling or exporting (those keep the plain layers, which they fuse
    themselves)."""
    return (not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not torch.is_grad_enabled() and x.device.type == 'cpu' and x.dim() == 4
            and x.dtype in dtypes and not torch.is_autocast_enabled('cpu'))


def _epilogue(x, conv, norm, act, residual):
    """(scale, shift) of ``conv`` followed by ``norm`` as the epilogue of
    :func:`conv_norm_act`'s fused op (:func:`inference_scale_shift`), or None where that op
    does not apply."""
    if not (eager_cpu_inference(x, (torch.float32, torch.float64)) and x.is_contiguous()):
        return None
    if not (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and _without_hooks(conv)
            and conv.weight.dtype == x.dtype and conv.in_channels == x.shape[1]
            and (act is None or (type(act) is nn.ReLU and _without_hooks(act)))):
        return None
    if residual is not None and not (residual.device == x.device and residual.dtype == x.dtype):
        return None
    if any(t is not None and t.dtype != x.dtype
           for t in (conv.bias, getattr(norm, 'weight', None), getattr(norm, 'running_var', None))):
        return None
    if not _has_epilogue_kernel():
        return None
    return inference_scale_shift(norm, conv.bias)


def inference_scale_shift(norm, bias=None):
    """(scale, shift) per channel such that ``norm(y + bias)`` is ``y * scale + shift`` (scale
    None for 1): for ``norm`` None or an ``nn.Identity`` (shift is ``bias``), or a BN in eval
    mode with running statistics; None for any other norm and where hooks would see the
    call."""
    if norm is None or (type(norm) is nn.Identity and _without_hooks(norm)):
        return None, bias
    if not (type(norm) in BATCH_NORMS and not norm.training and norm.running_mean is not None
            and _without_hooks(norm)):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift
