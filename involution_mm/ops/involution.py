"""The involution operator as the PyTorch custom op ``torch.ops.involution_mm.involution``.

The C++/CUDA extension defines the op and its kernels; this module adds the autograd formula
(both gradients by the extension's kernels) and fake kernels (shape propagation for
torch.compile and meta tensors). Without the extension, :func:`involution` falls back to the
unfold reference, with one warning.
"""
import warnings

import torch
from torch._prims_common import suggest_memory_format

from .reference import (canonical_weight, check_involution_args, default_padding,
                        involution_reference)

try:
    from involution_mm import _C  # noqa: F401  (loading it registers torch.ops.involution_mm)
    HAS_EXTENSION = True
except ImportError as err:
    HAS_EXTENSION = False
    warnings.warn(
        f'involution_mm: the compiled extension is not available ({err}); involution runs '
        'on the slow, memory-hungry unfold reference. Build it with '
        '`pip install -e . --no-build-isolation` (or `make env`).', RuntimeWarning)


def involution(input, weight, kernel_size, stride=1, dilation=1, padding=None):
    """Involution of ``input`` (B, C, H, W) with per-pixel kernels ``weight``.

    Args:
        input: (B, C, H, W), float32/float64/float16/bfloat16, any memory format.
        weight: (B, G, K, K, Ho, Wo), or the flat (B, G*K*K, Ho, Wo) layout of the kernel
            branch; channel c uses the kernel of group c // (C // G).
        kernel_size (int): K. stride, dilation (int): as in conv2d.
        padding (int, optional): zero padding; default dilation * (K - 1) // 2.

    Returns:
        (B, C, Ho, Wo) with Ho = floor((H + 2p - d(K-1) - 1) / s) + 1 (Wo alike), which for
        odd K and the default padding is ceil(H / s).

    Under ``torch.autocast`` float32 arguments run in the autocast dtype, as for conv2d.
    """
    if padding is None:
        padding = default_padding(kernel_size, dilation)
    weight = canonical_weight(weight, kernel_size)
    autocast = (isinstance(input, torch.Tensor) and input.device.type in ('cpu', 'cuda')
                and torch.is_autocast_enabled(input.device.type))
    check_involution_args(input, weight, kernel_size, stride, dilation, padding,
                          mixed_dtypes=autocast)
    if HAS_EXTENSION:
        return torch.ops.involution_mm.involution(input, weight, kernel_size, stride, dilation,
                                                  padding)
    return involution_reference(input, weight, kernel_size, stride, dilation, padding)


if HAS_EXTENSION:

    def _setup_context(ctx, inputs, output):
        input, weight, kernel_size, stride, dilation, padding = inputs
        ctx.save_for_backward(input, weight)
        ctx.hyper = (kernel_size, stride, dilation, padding)

    def _backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.involution_mm.involution_grad_input(
                grad_output, weight, list(input.shape[2:]), *ctx.hyper)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.involution_mm.involution_grad_weight(
                grad_output, input, *ctx.hyper, weight.shape[1])
        return grad_input, grad_weight, None, None, None, None

    torch.library.register_autograd('involution_mm::involution', _backward,
                                    setup_context=_setup_context)

    def _empty_like_layout(like, shape):
        return like.new_empty(shape).contiguous(memory_format=suggest_memory_format(like))

    @torch.library.register_fake('involution_mm::involution')
    def _involution_fake(input, weight, kernel_size, stride, dilation, padding):
        ho, wo = check_involution_args(input, weight, kernel_size, stride, dilation, padding)
        return _empty_like_layout(input, (input.shape[0], input.shape[1], ho, wo))

    @torch.library.register_fake('involution_mm::involution_grad_input')
    def _grad_input_fake(grad_output, weight, input_size, kernel_size, stride, dilation,
                         padding):
        b, c = grad_output.shape[:2]
        return _empty_like_layout(grad_output, (b, c, *input_size))

    @torch.library.register_fake('involution_mm::involution_grad_weight')
    def _grad_weight_fake(grad_output, input, kernel_size, stride, dilation, padding, groups):
        b, _, ho, wo = grad_output.shape
        return input.new_empty((b, groups, kernel_size, kernel_size, ho, wo))
