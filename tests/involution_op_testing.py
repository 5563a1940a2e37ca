"""Inputs, reference results and tolerances shared by the op tests (imported by module name:
pytest puts tests/ on sys.path; mmseg installs a package named ``tests``)."""
import torch

from involution_mm.ops import involution, involution_out_size, involution_reference

# Tolerances against a float64 reference computed from the same (rounded) inputs.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=6e-2, rtol=2e-2),
    torch.float16: dict(atol=1e-2, rtol=4e-3),
}


def make_inputs(batch, channels, groups, height, width, kernel_size, stride, dilation,
                dtype=torch.float32, layout='contiguous', seed=0):
    padding = dilation * (kernel_size - 1) // 2
    ho = involution_out_size(height, kernel_size, stride, dilation, padding)
    wo = involution_out_size(width, kernel_size, stride, dilation, padding)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    w = torch.randn(batch, groups, kernel_size, kernel_size, ho, wo, generator=gen,
                    dtype=torch.float64)
    x, w = x.to(dtype), w.to(dtype)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'strided':  # a view with gaps in every dimension
        big = torch.zeros(batch, 2 * channels, height + 3, 2 * width, dtype=dtype)
        big[:, ::2, 1:height + 1, ::2] = x
        x = big[:, ::2, 1:height + 1, ::2]
        assert not x.is_contiguous()
    return x, w, padding


def reference_with_grads(x, w, kernel_size, stride, dilation, padding, grad_out):
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    out = involution_reference(x64, w64, kernel_size, stride, dilation, padding)
    out.backward(grad_out.double())
    return out.detach(), x64.grad, w64.grad


def op_with_grads(x, w, kernel_size, stride, dilation, padding, grad_out):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    out = involution(x, w, kernel_size, stride, dilation, padding)
    out.backward(grad_out)
    return out.detach(), x.grad, w.grad


def assert_matches(actual, expected, dtype, what):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected, **tol, msg=lambda m: f'{what}: {m}')
