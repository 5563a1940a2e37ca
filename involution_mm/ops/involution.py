"""The involution operator as the PyTorch custom op ``torch.ops.involution_mm.involution``.

The C++/CUDA extension defines the op, its kernels and its autograd formula (both gradients
by the extension's kernels); this module adds the fake kernels (shape propagation for
torch.compile and meta tensors). Without the extension, :func:`involution` falls back to the
unfold reference, with one warning.
"""
import warnings

import torch
from torch._prims_common import suggest_memory_format

from .pointwise import conv1x1, conv1x1_backward
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


class _KernelConvInvolution(torch.autograd.Function):
    """involution(input, conv1x1(reduced)) that saves ``reduced`` instead of the kernel.

    The kernel tensor has G*K*K = 3.06*C channels per pixel in RedNet (K=7, 16 channels per
    group): storing it for backward costs three activations per block, while rebuilding it
    from the C/4-channel ``reduced`` costs one 1x1 conv. Backward recomputes it in the dtype
    the forward used (so autocast runs match) and derives the conv's gradients by the GEMMs
    of :func:`conv1x1_backward`.
    """

    @staticmethod
    def forward(ctx, input, reduced, conv_weight, conv_bias, kernel_size, stride, dilation,
                padding):
        weight = conv1x1(reduced, conv_weight, conv_bias)
        out = involution(input, weight, kernel_size, stride, dilation, padding)
        ctx.save_for_backward(input, reduced, conv_weight, conv_bias)
        ctx.hyper = (kernel_size, stride, dilation, padding)
        ctx.kernel_dtype = weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_output):
        input, reduced, conv_weight, conv_bias = ctx.saved_tensors
        kernel_size = ctx.hyper[0]
        dtype = ctx.kernel_dtype
        with torch.autocast(input.device.type, enabled=False):
            reduced_k, conv_weight_k = reduced.to(dtype), conv_weight.to(dtype)
            conv_bias_k = None if conv_bias is None else conv_bias.to(dtype)
            grad_output = grad_output.to(dtype)
            groups = conv_weight.shape[0] // (kernel_size * kernel_size)
            grad_input = None
            if ctx.needs_input_grad[0]:
                weight = conv1x1(reduced_k, conv_weight_k, conv_bias_k)
                grad_input = torch.ops.involution_mm.involution_grad_input(
                    grad_output, canonical_weight(weight, kernel_size),
                    list(input.shape[2:]), *ctx.hyper).to(input.dtype)
                del weight  # before grad_weight allocates a tensor of the same size
            grad_reduced = grad_conv_weight = grad_conv_bias = None
            if any(ctx.needs_input_grad[1:4]):
                grad_weight = torch.ops.involution_mm.involution_grad_weight(
                    grad_output, input.to(dtype), *ctx.hyper, groups)
                grad_reduced, grad_conv_weight, grad_conv_bias = conv1x1_backward(
                    grad_weight.flatten(1, 3), reduced_k, conv_weight_k,
                    [ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                     ctx.needs_input_grad[3] and conv_bias is not None])
        return (grad_input, _cast(grad_reduced, reduced), _cast(grad_conv_weight, conv_weight),
                _cast(grad_conv_bias, conv_bias), None, None, None, None)


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


def kernel_conv_involution(input, reduced, conv_weight, conv_bias, kernel_size, stride=1,
                           dilation=1, padding=None):
    """``involution(input, conv2d(reduced, conv_weight, conv_bias), ...)`` with the kernel
    recomputed in backward rather than stored: the same values and gradients, about
    3*C fewer floats per pixel kept for backward (see :class:`_KernelConvInvolution`).

    Args:
        input: (B, C, H, W).
        reduced: (B, C_r, Ho, Wo), the kernel branch's features before its last 1x1 conv.
        conv_weight: (G*K*K, C_r, 1, 1); conv_bias: (G*K*K,) or None.
    Other arguments as :func:`involution`. Without the extension this is the plain
    composition (the reference keeps its own buffers anyway).
    """
    if conv_weight.dim() != 4 or conv_weight.shape[2:] != (1, 1):
        raise ValueError('kernel_conv_involution: conv_weight must be a 1x1 conv weight '
                         f'(G*K*K, C_r, 1, 1), got shape {tuple(conv_weight.shape)}')
    if padding is None:
        padding = default_padding(kernel_size, dilation)
    if not HAS_EXTENSION:
        return involution(input, conv1x1(reduced, conv_weight, conv_bias), kernel_size, stride,
                          dilation, padding)
    return _KernelConvInvolution.apply(input, reduced, conv_weight, conv_bias, kernel_size,
                                       stride, dilation, padding)


if HAS_EXTENSION:

    def _empty_like_layout(like, shape):
        return like.new_empty(shape).contiguous(memory_format=suggest_memory_format(like))

    @torch.library.register_fake('involution_mm::involution')
    def _involution_fake(input, weight, kernel_size, stride, dilation, padding):
        ho, wo = check_involution_args(input, weight, kernel_size, stride, dilation, padding)
        return _empty_like_layout(input, (input.shape[0], input.shape[1], ho, wo))

    @torch.library.register_fake('involution_mm::involution_epilogue')
    def _involution_epilogue_fake(input, weight, kernel_size, stride, dilation, padding, scale,
                                  shift, relu):
        # the checks of the CPU kernel: a meta scale or shift beside CPU tensors dispatches here
        for name, v in (('scale', scale), ('shift', shift)):
            if v is None:
                continue
            if v.dim() != 1 or v.shape[0] != input.shape[1]:
                raise ValueError(f'involution_epilogue: {name} must have shape '
                                 f'({input.shape[1]},), got {list(v.shape)}')
            if v.dtype != input.dtype or v.device != input.device:
                raise ValueError(f'involution_epilogue: {name} must be {input.dtype} on '
                                 f'{input.device} like the input, got {v.dtype} on {v.device}')
        return _involution_fake(input, weight, kernel_size, stride, dilation, padding)

    @torch.library.register_fake('involution_mm::involution_grad_input')
    def _grad_input_fake(grad_output, weight, input_size, kernel_size, stride, dilation,
                         padding):
        b, c = grad_output.shape[:2]
        return _empty_like_layout(grad_output, (b, c, *input_size))

    @torch.library.register_fake('involution_mm::involution_grad_weight')
    def _grad_weight_fake(grad_output, input, kernel_size, stride, dilation, padding, groups):
        b, _, ho, wo = grad_output.shape
        return input.new_empty((b, groups, kernel_size, kernel_size, ho, wo))
