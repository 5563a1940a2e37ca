"""The CUDA kernels of involution_mm against the float64 reference and the CPU kernels.

Forward and both gradients over a grid of shapes (K 1/2/3/5/7/9 -- the specialised and the
generic kernels --, stride, dilation, padding, odd/even sizes, groups, batch, channels_last),
every dtype with its tolerance (float16/bfloat16 against a float64 reference computed from
the same rounded inputs), gradcheck, torch.library.opcheck, torch.autocast, a non-default
stream, CUDA graph capture, a second device, and a tensor of more than 2**31 elements.

Everything here needs a CUDA device and an extension built with its CUDA kernels; on other
machines the module is skipped (tests/test_cuda_compile.py and
tests/test_cuda_kernel_emulation.py guard the CUDA sources there).
"""
import itertools
import os

import pytest
import torch

from involution_mm.ops import involution, involution_out_size, involution_reference
from involution_mm.ops.involution import HAS_EXTENSION


def _has_cuda_kernels():
    if not (HAS_EXTENSION and torch.cuda.is_available()):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key('involution_mm::involution', 'CUDA')


if not torch.cuda.is_available():
    _SKIP_REASON = 'no CUDA device (torch.cuda.is_available() is False)'
elif not HAS_EXTENSION:
    _SKIP_REASON = 'the involution_mm extension is not built'
else:
    _SKIP_REASON = ('the involution_mm extension was built without its CUDA kernels (a CUDA '
                    'torch and CUDA_HOME are needed; FORCE_CUDA=1 insists)')

# A GPU CI sets INVOLUTION_REQUIRE_CUDA=1 so that a CPU-only build fails instead of skipping.
if os.environ.get('INVOLUTION_REQUIRE_CUDA') == '1' and torch.cuda.is_available():
    assert _has_cuda_kernels(), _SKIP_REASON

pytestmark = pytest.mark.skipif(not _has_cuda_kernels(), reason=_SKIP_REASON)

DEV = 'cuda'
# (atol, rtol) of each dtype against a float64 reference computed from the same rounded inputs:
# the kernels accumulate in float32 (float64 for float64), so the error is about one rounding
# of the result to the dtype.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (4e-2, 2e-2),
}


def _default_padding(k, d):
    return d * (k - 1) // 2


def _inputs(b, c, g, h, w, k, s=1, d=1, p=None, dtype=torch.float32, channels_last=False,
            seed=0, device=DEV):
    """x (B, C, H, W), weight (B, G, K, K, Ho, Wo) and grad_output (B, C, Ho, Wo), random normal
    values rounded to `dtype`."""
    p = _default_padding(k, d) if p is None else p
    ho, wo = involution_out_size(h, k, s, d, p), involution_out_size(w, k, s, d, p)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(b, g, k, k, ho, wo, generator=gen, dtype=torch.float64)
    go = torch.randn(b, c, ho, wo, generator=gen, dtype=torch.float64)
    x, wt, go = (t.to(device=device, dtype=dtype) for t in (x, wt, go))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        go = go.contiguous(memory_format=torch.channels_last)
    return x, wt, go, p


def _run(fn, x, wt, go, k, s, d, p):
    """out, grad_x, grad_w of fn(x, wt, k, s, d, p) for the output gradient go."""
    x = x.detach().requires_grad_(True)
    wt = wt.detach().requires_grad_(True)
    out = fn(x, wt, k, s, d, p)
    gx, gw = torch.autograd.grad(out, (x, wt), go)
    return out.detach(), gx, gw


def _reference(x, wt, go, k, s, d, p):
    return _run(involution_reference, x.double(), wt.double(), go.double(), k, s, d, p)


def _assert_close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    assert actual.dtype == dtype, f'{what}: dtype {actual.dtype}, expected {dtype}'
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol,
                               msg=lambda m: f'{what}: {m}')


def _check_against_reference(b, c, g, h, w, k, s, d, p=None, dtype=torch.float32,
                             channels_last=False, seed=0):
    x, wt, go, p = _inputs(b, c, g, h, w, k, s, d, p, dtype, channels_last, seed)
    out, gx, gw = _run(involution, x, wt, go, k, s, d, p)
    ref_out, ref_gx, ref_gw = _reference(x, wt, go, k, s, d, p)
    what = (f'B={b} C={c} G={g} {h}x{w} K={k} s={s} d={d} p={p} {dtype} '
            f'channels_last={channels_last}')
    _assert_close(out, ref_out, dtype, 'forward ' + what)
    _assert_close(gx, ref_gx, dtype, 'grad_input ' + what)
    _assert_close(gw, ref_gw, dtype, 'grad_weight ' + what)
    # Memory formats follow the inputs, as on CPU and in the fake kernels.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if c > 1 and h * w > 1:
        assert out.is_contiguous(memory_format=fmt), what
        assert gx.is_contiguous(memory_format=fmt), what
    assert gw.is_contiguous(), what


# ------------------------------------------------------------------------------ shape grid

@pytest.mark.parametrize('k,s,d', list(itertools.product((1, 2, 3, 5, 7, 9), (1, 2), (1, 2))))
def test_matches_reference_float32(k, s, d):
    for (h, w), g, b, cl in itertools.product(((9, 8), (8, 11)), (1, 3), (1, 2), (False, True)):
        _check_against_reference(b, 6 * g, g, h, w, k, s, d, channels_last=cl, seed=k + s + d)


@pytest.mark.parametrize('p', (0, 1, 4))
@pytest.mark.parametrize('k,s,d', [(3, 1, 1), (3, 2, 2), (5, 3, 1), (7, 2, 1)])
def test_explicit_padding(k, s, d, p):
    _check_against_reference(2, 8, 2, 10, 7, k, s, d, p)


@pytest.mark.parametrize('dtype', (torch.float64, torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize('k,s', [(3, 1), (7, 1), (7, 2), (4, 2)])
@pytest.mark.parametrize('channels_last', (False, True))
def test_dtypes(dtype, k, s, channels_last):
    # RedNet-like: 16 channels per group.
    _check_against_reference(2, 32, 2, 14, 13, k, s, 1, dtype=dtype, channels_last=channels_last)


@pytest.mark.parametrize('cg', (1, 5, 16, 64))
def test_group_sizes_and_channel_chunks(cg):
    # Large groups are split into channel chunks for parallelism; tiny images force the most
    # chunks, large ones none.
    for h in (3, 40):
        _check_against_reference(1, 2 * cg, 2, h, h, 7, 1, 1)
        _check_against_reference(2, 2 * cg, 2, h, h + 1, 3, 2, 1)


def test_rednet_shapes():
    # Stage shapes of RedNet-50 (mid channels, 16 per group, K=7) at a small batch.
    for c, hw, s in ((64, 56, 1), (128, 56, 2), (256, 28, 2), (512, 7, 1)):
        _check_against_reference(2, c, c // 16, hw, hw, 7, s, 1, seed=c)


def test_noncontiguous_inputs():
    x, wt, go, p = _inputs(2, 12, 3, 11, 10, 3, 1, 1)
    # Sliced / transposed views with gaps in their strides.
    xv = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]  # W stride 2
    wv = wt.transpose(4, 5).contiguous().transpose(4, 5)
    gov = torch.stack([go, torch.zeros_like(go)], dim=2)[:, :, 0]  # gaps between channels
    assert not xv.is_contiguous() and not wv.is_contiguous() and not gov.is_contiguous()
    out, gx, gw = _run(involution, xv, wv, gov, 3, 1, 1, p)
    ref = _reference(x, wt, go, 3, 1, 1, p)
    for a, e, n in zip((out, gx, gw), ref, ('forward', 'grad_input', 'grad_weight')):
        _assert_close(a, e, torch.float32, n)


def test_flat_weight_layout():
    x, wt, go, p = _inputs(2, 8, 2, 9, 9, 3, 1, 1)
    flat = wt.reshape(2, 2 * 9, 9, 9)
    torch.testing.assert_close(involution(x, flat, 3), involution(x, wt, 3))


@pytest.mark.parametrize('dtype', (torch.float32, torch.float64))
def test_cuda_matches_cpu_kernels(dtype):
    for k, s, d, cl in [(3, 1, 1, False), (7, 2, 1, True), (5, 1, 2, False), (2, 2, 1, True)]:
        x, wt, go, p = _inputs(2, 16, 2, 13, 12, k, s, d, dtype=dtype, channels_last=cl)
        cuda = _run(involution, x, wt, go, k, s, d, p)
        cpu = _run(involution, x.cpu(), wt.cpu(), go.cpu(), k, s, d, p)
        for a, e in zip(cuda, cpu):
            atol, rtol = TOL[dtype]
            torch.testing.assert_close(a.cpu(), e, atol=atol, rtol=rtol)


def test_deterministic():
    x, wt, go, p = _inputs(2, 64, 4, 28, 28, 7, 1, 1)
    first = _run(involution, x, wt, go, 7, 1, 1, p)
    second = _run(involution, x, wt, go, 7, 1, 1, p)
    for a, b in zip(first, second):
        assert torch.equal(a, b)  # no atomics: bitwise reproducible


def test_empty_batch():
    x, wt, go, p = _inputs(0, 8, 2, 9, 9, 3)
    out = involution(x, wt, 3)
    assert out.shape == (0, 8, 9, 9) and out.device == x.device
    gx = torch.ops.involution_mm.involution_grad_input(go, wt, [9, 9], 3, 1, 1, p)
    gw = torch.ops.involution_mm.involution_grad_weight(go, x, 3, 1, 1, p, 2)
    assert gx.shape == (0, 8, 9, 9) and gw.shape == (0, 2, 3, 3, 9, 9)


def test_device_mismatch_is_an_error():
    x, wt, _, _ = _inputs(1, 4, 1, 5, 5, 3)
    with pytest.raises((ValueError, RuntimeError)):
        torch.ops.involution_mm.involution(x, wt.cpu(), 3, 1, 1, 1)


# ------------------------------------------------------------------------------ autograd

@pytest.mark.parametrize('k,s,d,p', [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 3), (7, 1, 1, 3),
                                     (2, 1, 1, 0), (4, 3, 1, 2)])
def test_gradcheck_float64(k, s, d, p):
    x, wt, _, p = _inputs(2, 4, 2, 7, 6, k, s, d, p, dtype=torch.float64)
    x.requires_grad_(True)
    wt.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: involution(a, b, k, s, d, p), (x, wt),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('channels_last', (False, True))
def test_opcheck(channels_last):
    x, wt, go, p = _inputs(2, 8, 2, 9, 8, 3, 2, 1, channels_last=channels_last)
    ops = torch.ops.involution_mm
    torch.library.opcheck(ops.involution.default, (x, wt, 3, 2, 1, p))
    torch.library.opcheck(ops.involution.default,
                          (x.clone().requires_grad_(), wt.clone().requires_grad_(), 3, 2, 1, p))
    torch.library.opcheck(ops.involution_grad_input.default, (go, wt, [9, 8], 3, 2, 1, p))
    torch.library.opcheck(ops.involution_grad_weight.default, (go, x, 3, 2, 1, p, 2))


# ------------------------------------------------------------------------------ autocast

@pytest.mark.parametrize('amp_dtype', (torch.float16, torch.bfloat16))
def test_autocast_casts_float32_to_autocast_dtype(amp_dtype):
    x, wt, go, p = _inputs(2, 32, 2, 12, 12, 7, 1, 1, dtype=torch.float32)
    x.requires_grad_(True)
    wt.requires_grad_(True)
    with torch.autocast('cuda', dtype=amp_dtype):
        out = involution(x, wt, 7)
        direct = torch.ops.involution_mm.involution(x, wt, 7, 1, 1, p)
    assert out.dtype == amp_dtype and direct.dtype == amp_dtype
    ref = involution_reference(x.detach().to(amp_dtype).double(),
                               wt.detach().to(amp_dtype).double(), 7)
    _assert_close(out, ref, amp_dtype, 'autocast forward')
    torch.testing.assert_close(out, direct)
    out.backward(go.to(amp_dtype))
    # Gradients flow back through the casts to the float32 leaves.
    assert x.grad.dtype == torch.float32 and wt.grad.dtype == torch.float32
    _, ref_gx, ref_gw = _reference(x.detach().to(amp_dtype), wt.detach().to(amp_dtype),
                                   go.to(amp_dtype), 7, 1, 1, p)
    atol, rtol = TOL[amp_dtype]
    torch.testing.assert_close(x.grad.double(), ref_gx, atol=atol, rtol=rtol)
    torch.testing.assert_close(wt.grad.double(), ref_gw, atol=atol, rtol=rtol)


def test_autocast_mixed_dtypes():
    # Under autocast a conv kernel branch gives a float16 weight for a float32 input.
    x, wt, _, p = _inputs(2, 16, 1, 10, 10, 3, 1, 1, dtype=torch.float32)
    with torch.autocast('cuda', dtype=torch.float16):
        direct = torch.ops.involution_mm.involution(x, wt.half(), 3, 1, 1, p)
        public = involution(x, wt.half(), 3)
    assert direct.dtype == torch.float16 and public.dtype == torch.float16
    ref = involution_reference(x.half().double(), wt.half().double(), 3)
    _assert_close(direct, ref, torch.float16, 'autocast mixed (op)')
    _assert_close(public, ref, torch.float16, 'autocast mixed (involution)')


def test_autocast_involution_module():
    pytest.importorskip('mmcv.cnn', reason='the Involution layer needs mmcv (or mmcv-lite)')
    from involution_mm.ops import Involution
    torch.manual_seed(0)
    layer = Involution(32, 7, stride=2).to(DEV)
    x = torch.randn(2, 32, 15, 15, device=DEV, requires_grad=True)
    with torch.autocast('cuda', dtype=torch.float16):
        out = layer(x)
    assert out.dtype == torch.float16 and out.shape == (2, 32, 8, 8)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.dtype == torch.float32
    assert all(torch.isfinite(prm.grad).all() for prm in layer.parameters() if prm.grad is not None)


def test_autocast_leaves_float64_alone():
    x, wt, _, _ = _inputs(1, 4, 1, 6, 6, 3, dtype=torch.float64)
    with torch.autocast('cuda', dtype=torch.float16):
        out = involution(x, wt, 3)
    assert out.dtype == torch.float64


# ------------------------------------------------------------------------------ streams, devices

def test_runs_on_the_current_stream():
    x, wt, go, p = _inputs(2, 32, 2, 32, 32, 7, 1, 1)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # Keep the side stream busy, then produce the input on it: a kernel launched on any
        # other stream would read x2 before it is written.
        torch.cuda._sleep(50_000_000)
        x2 = x * 2
        wt2 = wt + 1
        out, gx, gw = _run(involution, x2, wt2, go, 7, 1, 1, p)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    ref_out, ref_gx, ref_gw = _reference(x * 2, wt + 1, go, 7, 1, 1, p)
    _assert_close(out, ref_out, torch.float32, 'side-stream forward')
    _assert_close(gx, ref_gx, torch.float32, 'side-stream grad_input')
    _assert_close(gw, ref_gw, torch.float32, 'side-stream grad_weight')


def test_cuda_graph_capture():
    # Capture fails if a kernel is launched on a stream other than the capturing one.
    x, wt, go, p = _inputs(2, 16, 1, 16, 16, 3, 1, 1)
    static_x, static_w = x.clone(), wt.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        involution(static_x, static_w, 3)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = involution(static_x, static_w, 3)
    static_x.copy_(x * 3)
    graph.replay()
    torch.cuda.synchronize()
    _assert_close(static_out, involution_reference(x.double() * 3, wt.double(), 3),
                  torch.float32, 'graph replay')


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA devices')
def test_second_device():
    x, wt, go, p = _inputs(2, 8, 2, 9, 9, 5, 2, 1, device='cuda:1')
    with torch.cuda.device(0):
        out, gx, gw = _run(involution, x, wt, go, 5, 2, 1, p)
    assert out.device == x.device and gx.device == x.device and gw.device == x.device
    ref = _reference(x, wt, go, 5, 2, 1, p)
    for a, e, n in zip((out, gx, gw), ref, ('forward', 'grad_input', 'grad_weight')):
        _assert_close(a, e, torch.float32, n)


# ------------------------------------------------------------------------------ 64-bit indexing

@pytest.mark.slow
def test_more_than_2_31_elements():
    # 64 channels of 5800 x 5800 float16: 2.15e9 > 2**31 elements per 4-d tensor, so the
    # kernels take their int64-index path. Checked on the last rows of the last channels, whose
    # offsets are beyond 2**31, against the reference on a crop.
    b, c, g, h, w, k = 1, 64, 1, 5800, 5800, 3
    gib = 2 ** 30
    needed = 26 * gib  # x, out, grad_out, grad_in (4 GiB each), weights, temporaries
    free, _ = torch.cuda.mem_get_info()
    if free < needed:
        pytest.skip(f'needs {needed / gib:.0f} GiB of free GPU memory, {free / gib:.1f} free')
    assert c * h * w > 2 ** 31
    dtype = torch.float16
    gen = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(b, c, h, w, device=DEV, dtype=dtype, generator=gen)
    wt = torch.randn(b, g, k, k, h, w, device=DEV, dtype=dtype, generator=gen)
    out = torch.ops.involution_mm.involution(x, wt, k, 1, 1, 1)
    a = h - 6  # rows [a, h) of the output / gradients are checked
    cs = slice(c - 3, c)
    ref_out = involution_reference(x[:, cs, a - 1:].double(), wt[..., a - 1:, :].double(), k)
    _assert_close(out[:, cs, a:], ref_out[:, :, 1:], dtype, 'large forward')
    del out

    go = torch.randn(b, c, h, w, device=DEV, dtype=dtype, generator=gen)
    gx = torch.ops.involution_mm.involution_grad_input(go, wt, [h, w], k, 1, 1, 1)
    xc = x[:, :, a - 2:].double().requires_grad_(True)
    wc = wt[..., a - 2:, :].double().requires_grad_(True)
    # The reference on the full channel range of the crop (grad_weight sums over all of them).
    outc = involution_reference(xc, wc, k)
    ref_gx, ref_gw = torch.autograd.grad(outc, (xc, wc), go[:, :, a - 2:].double())
    _assert_close(gx[:, cs, a:], ref_gx[:, cs, 2:], dtype, 'large grad_input')
    del gx
    gw = torch.ops.involution_mm.involution_grad_weight(go, x, k, 1, 1, 1, g)
    # grad_weight rows i >= a - 1 only read input rows >= a - 2, all in the crop.
    _assert_close(gw[..., a:, :], ref_gw[..., 2:, :], dtype, 'large grad_weight')
