"""The involution op on CPU: parity with the unfold reference, gradients, dtypes, layouts,
bad input, opcheck, torch.compile, determinism and the no-extension fallback.

Needs torch and pytest alone (tools/gpu_check runs it in such an environment): the
Involution layer, which needs mmcv, is tested in test_involution_module.py."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from involution_op_testing import (assert_matches, make_inputs, op_with_grads,
                                   reference_with_grads)

from involution_mm.ops import (HAS_EXTENSION, involution, involution_out_size,
                               involution_reference, kernel_conv_involution)

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason='the compiled extension is not built')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# K, stride, dilation, with shapes covering odd/even sizes, one and several groups, group
# sizes that take both CPU kernels (channel-vectorised: C/G = 8, 16 or 32; general: others).
GEOMETRY = [(k, s, d) for k in (1, 3, 5, 7) for s in (1, 2) for d in (1, 2)]
SHAPES = [
    # batch, channels, groups, height, width
    (1, 4, 1, 9, 8),
    (2, 32, 2, 8, 11),
    (3, 48, 3, 7, 13),
    (2, 24, 2, 10, 9),
    (1, 64, 2, 12, 12),
]


@pytest.mark.parametrize('kernel_size,stride,dilation', GEOMETRY)
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_matches_reference_float32(kernel_size, stride, dilation, shape):
    b, c, g, h, w_ = shape
    x, w, p = make_inputs(b, c, g, h, w_, kernel_size, stride, dilation)
    grad_out = torch.randn(b, c, *w.shape[-2:], generator=torch.Generator().manual_seed(1))
    got = op_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    want = reference_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    for name, a, e in zip(('output', 'grad_input', 'grad_weight'), got, want):
        assert a.dtype == torch.float32
        assert_matches(a, e, torch.float32, name)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
@pytest.mark.parametrize('kernel_size,stride,dilation', [(7, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 2)])
@pytest.mark.parametrize('shape', [(2, 32, 2, 9, 14), (1, 12, 3, 8, 7)],
                         ids=lambda s: 'x'.join(map(str, s)))
def test_dtypes_and_layouts(dtype, layout, kernel_size, stride, dilation, shape):
    b, c, g, h, w_ = shape
    x, w, p = make_inputs(b, c, g, h, w_, kernel_size, stride, dilation, dtype, layout)
    grad_out = torch.randn(b, c, *w.shape[-2:], generator=torch.Generator().manual_seed(2))
    grad_out = grad_out.to(dtype)
    if layout == 'channels_last':
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    got = op_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    want = reference_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    out, grad_x, grad_w = got
    assert out.dtype == grad_x.dtype == grad_w.dtype == dtype
    if layout == 'channels_last':
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grad_x.is_contiguous(memory_format=torch.channels_last)
    for name, a, e in zip(('output', 'grad_input', 'grad_weight'), got, want):
        assert_matches(a, e, dtype, name)


EPILOGUES = {'bn_relu': (True, True, True), 'shift': (False, True, False),
             'scale_relu': (True, False, True), 'none': (False, False, False)}


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
@pytest.mark.parametrize('kernel_size,stride,dilation', [(7, 1, 1), (3, 2, 1)])
@pytest.mark.parametrize('shape', [(2, 32, 2, 9, 14), (1, 12, 3, 8, 7)],
                         ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('epilogue', list(EPILOGUES))
def test_epilogue_is_scale_shift_relu_of_the_output(epilogue, dtype, layout, kernel_size,
                                                    stride, dilation, shape):
    """involution_epilogue = relu(involution * scale + shift) per channel, in every kernel
    family (the shapes' group sizes and strides take the channel-vectorised, flat and panel
    kernels) and layout, against the float64 reference."""
    b, c, g, h, w_ = shape
    x, w, p = make_inputs(b, c, g, h, w_, kernel_size, stride, dilation, dtype, layout)
    with_scale, with_shift, relu = EPILOGUES[epilogue]
    gen = torch.Generator().manual_seed(3)
    scale = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    shift = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    out = torch.ops.involution_mm.involution_epilogue(
        x, w, kernel_size, stride, dilation, p, scale if with_scale else None,
        shift if with_shift else None, relu)
    want = involution_reference(x.double(), w.double(), kernel_size, stride, dilation, p)
    if with_scale:
        want = want * scale.double()[:, None, None]
    if with_shift:
        want = want + shift.double()[:, None, None]
    if relu:
        want = want.relu()
    assert out.dtype == dtype
    if layout == 'channels_last':
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches(out, want, dtype, 'output')


def test_epilogue_relu_keeps_nan_and_meta_shapes():
    x, w, p = make_inputs(1, 16, 1, 9, 10, 7, 1, 1)
    x[0, 3, 4, 5] = float('nan')
    out = torch.ops.involution_mm.involution_epilogue(x, w, 7, 1, 1, p, None, None, True)
    expected = involution(x, w, 7).relu()
    assert out.isnan().any()
    torch.testing.assert_close(out, expected, equal_nan=True)
    meta = torch.ops.involution_mm.involution_epilogue(
        x.to('meta'), torch.empty(1, 1, 7, 7, 5, 5, device='meta'), 7, 2, 1, p, None,
        torch.empty(16, device='meta'), True)
    assert meta.shape == (1, 16, 5, 5) and meta.device.type == 'meta'


def test_flat_weight_layout_is_accepted():
    x, w, p = make_inputs(2, 32, 2, 9, 10, 7, 2, 1)
    flat = w.reshape(2, 2 * 49, *w.shape[-2:])
    torch.testing.assert_close(involution(x, flat, 7, 2), involution(x, w, 7, 2))


def test_default_padding_keeps_size_and_odd_sizes_halve_up():
    for h, w_ in ((7, 8), (13, 6), (1, 1)):
        x, w, _ = make_inputs(1, 16, 1, h, w_, 7, 2, 1)
        assert involution(x, w, 7, 2).shape[-2:] == (-(-h // 2), -(-w_ // 2))
        x, w, _ = make_inputs(1, 16, 1, h, w_, 7, 1, 2)
        assert involution(x, w, 7, 1, 2).shape[-2:] == (h, w_)


def test_explicit_padding():
    x, w, _ = make_inputs(1, 8, 2, 9, 9, 3, 1, 1)  # weight for padding 1 (9x9 output)
    x0 = x[..., 1:-1, 1:-1].contiguous()  # 7x7 input with padding 2 gives 9x9 too
    torch.testing.assert_close(involution(x0, w, 3, 1, 1, 2),
                               involution_reference(x0, w, 3, 1, 1, 2))


@pytest.mark.parametrize('kernel_size,stride,dilation', [(3, 1, 1), (3, 2, 1), (3, 1, 2), (5, 2, 2)])
@pytest.mark.parametrize('groups,channels', [(1, 2), (2, 4)])
def test_gradcheck_float64(kernel_size, stride, dilation, groups, channels):
    x, w, p = make_inputs(2, channels, groups, 6, 5, kernel_size, stride, dilation, torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: involution(a, b, kernel_size, stride, dilation, p), (x, w))


def test_gradcheck_channel_vectorised_kernels():
    """C/G = 16 and 32 take the channel-vectorised kernels on every ISA."""
    for channels in (16, 32):
        x, w, p = make_inputs(1, channels, 1, 5, 6, 3, 2, 1, torch.float64)
        x.requires_grad_()
        w.requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: involution(a, b, 3, 2, 1, p), (x, w))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('width', [7, 8, 23])
def test_forward_either_side_of_the_dense_kernel_choice(dtype, width):
    """16 channels a group, K = 7, stride 1: with AVX-512 the forward runs the flat kernel on
    rows of fewer than 8 pixels and the dense channel-vectorised one from 8 pixels on."""
    x, w, p = make_inputs(2, 32, 2, 10, width, 7, 1, 1, dtype)
    grad_out = torch.randn(2, 32, 10, width, generator=torch.Generator().manual_seed(3)).to(dtype)
    got = op_with_grads(x, w, 7, 1, 1, p, grad_out)
    want = reference_with_grads(x, w, 7, 1, 1, p, grad_out)
    for name, a, e in zip(('output', 'grad_input', 'grad_weight'), got, want):
        assert_matches(a, e, dtype, name)


@pytest.mark.parametrize('case', [
    dict(shape=(2, 32, 2, 9, 8), k=7, s=1, d=1, layout='contiguous'),
    dict(shape=(1, 12, 3, 7, 10), k=3, s=2, d=2, layout='channels_last'),
    dict(shape=(2, 16, 1, 6, 6), k=5, s=2, d=1, layout='strided'),
], ids=['k7', 'k3s2d2_cl', 'k5s2_strided'])
def test_opcheck(case):
    b, c, g, h, w_ = case['shape']
    x, w, p = make_inputs(b, c, g, h, w_, case['k'], case['s'], case['d'], layout=case['layout'])
    x.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(torch.ops.involution_mm.involution.default,
                          (x, w, case['k'], case['s'], case['d'], p))
    grad_out = torch.randn(b, c, *w.shape[-2:])
    torch.library.opcheck(torch.ops.involution_mm.involution_grad_input.default,
                          (grad_out, w.detach(), [h, w_], case['k'], case['s'], case['d'], p))
    torch.library.opcheck(torch.ops.involution_mm.involution_grad_weight.default,
                          (grad_out, x.detach(), case['k'], case['s'], case['d'], p, g))


def test_torch_compile_matches_eager():
    """The op and the recomputed-kernel composition compile in one graph and give the eager
    values and gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 15, 12, requires_grad=True)
    reduced = torch.randn(2, 8, 8, 6, requires_grad=True)
    conv_weight = torch.randn(98, 8, 1, 1, requires_grad=True)
    conv_bias = torch.randn(98, requires_grad=True)
    leaves = (x, reduced, conv_weight, conv_bias)

    def fn(x, reduced, conv_weight, conv_bias):
        direct = involution(x, torch.nn.functional.conv2d(reduced, conv_weight, conv_bias), 7, 2)
        return direct + kernel_conv_involution(x, reduced, conv_weight, conv_bias, 7, 2)

    results = []
    for f in (fn, torch.compile(fn, fullgraph=True)):
        out = f(*leaves)
        results.append((out.detach(), torch.autograd.grad(out.square().sum(), leaves)))
    (eager_out, eager_grads), (compiled_out, compiled_grads) = results
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    for a, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_meta_tensors_propagate_shapes():
    x = torch.empty(2, 32, 15, 12, device='meta')
    w = torch.empty(2, 2, 7, 7, 8, 6, device='meta')
    out = involution(x, w, 7, 2)
    assert out.shape == (2, 32, 8, 6) and out.device.type == 'meta'


def test_deterministic_and_independent_of_thread_count():
    x, w, p = make_inputs(4, 32, 2, 20, 17, 7, 1, 1)
    grad_out = torch.randn(4, 32, 20, 17)
    threads = torch.get_num_threads()
    many = max(threads, 2)  # several threads even where torch defaults to one
    try:
        results = []
        for n in (many, 1, many):
            torch.set_num_threads(n)
            results.append(op_with_grads(x, w, 7, 1, 1, p, grad_out))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_zero_size_batch_gives_empty_output_and_grads():
    """As conv2d: an empty batch (e.g. no RoIs in a mask head) is valid and gives empties."""
    x, w, p = make_inputs(0, 16, 1, 7, 7, 7, 1, 1)
    out, gx, gw = op_with_grads(x, w, 7, 1, 1, p, torch.zeros(0, 16, 7, 7))
    assert out.shape == (0, 16, 7, 7) and gx.shape == x.shape and gw.shape == w.shape


# ---- bad input ----------------------------------------------------------------------------

def _ok():
    return make_inputs(2, 32, 2, 9, 8, 7, 1, 1)[:2]


BAD_CALLS = {
    'input rank': (lambda x, w: involution(x[0], w, 7), ValueError, 'input must be 4-d'),
    'weight rank': (lambda x, w: involution(x, w[0], 7), ValueError, 'weight must be 6-d'),
    'groups do not divide channels': (
        lambda x, w: involution(x[:, :30], torch.randn(2, 4, 7, 7, 9, 8), 7), ValueError,
        'cannot be split into 4 groups'),
    'weight spatial size': (lambda x, w: involution(x, w[..., :-1], 7), ValueError,
                            r'weight must have shape \(B, G, K, K, Ho, Wo\)'),
    'weight size for stride': (lambda x, w: involution(x, w, 7, stride=2), ValueError,
                               'weight must have shape'),
    'weight kernel size': (lambda x, w: involution(x, w, 5), ValueError, 'weight must have shape'),
    'weight batch': (lambda x, w: involution(x, w[:1], 7), ValueError, 'weight must have shape'),
    'flat weight channels': (lambda x, w: involution(x, torch.randn(2, 50, 9, 8), 7), ValueError,
                             'not a multiple of 49'),
    'mixed dtypes': (lambda x, w: involution(x.double(), w, 7), ValueError,
                     'input has dtype torch.float64 but weight has torch.float32'),
    'integer dtype': (lambda x, w: involution(x.int(), w.int(), 7), ValueError,
                      'must be float32, float64, float16 or bfloat16'),
    'mixed devices': (lambda x, w: involution(x, w.to('meta'), 7), ValueError,
                      'input is on cpu but weight is on meta'),
    'zero kernel size': (lambda x, w: involution(x, w, 0), ValueError, 'kernel_size must be positive'),
    'zero kernel size, flat weight': (lambda x, w: involution(x, torch.randn(2, 98, 9, 8), 0),
                                      ValueError, 'kernel_size must be positive'),
    'zero kernel size, explicit padding': (lambda x, w: involution(x, w.flatten(1, 3), 0, padding=3),
                                           ValueError, 'kernel_size must be positive'),
    'string kernel size': (lambda x, w: involution(x, w, '7'), TypeError, 'kernel_size must be an int'),
    'float dilation': (lambda x, w: involution(x, w, 7, dilation=1.0), TypeError,
                       'dilation must be an int'),
    'negative kernel size': (lambda x, w: involution(x, w, -3), ValueError, 'kernel_size must be positive'),
    'zero stride': (lambda x, w: involution(x, w, 7, stride=0), ValueError, 'stride must be positive'),
    'negative stride': (lambda x, w: involution(x, w, 7, stride=-1), ValueError, 'stride must be positive'),
    'zero dilation': (lambda x, w: involution(x, w, 7, dilation=0), ValueError, 'dilation must be positive'),
    'negative padding': (lambda x, w: involution(x, w, 7, padding=-1), ValueError,
                         'padding must be non-negative'),
    'float kernel size': (lambda x, w: involution(x, w, 7.0), TypeError, 'kernel_size must be an int'),
    'zero channels': (lambda x, w: involution(x[:, :0], w, 7), ValueError, 'non-zero channels'),
    'input smaller than kernel': (
        lambda x, w: involution(x[..., :2, :2], w, 7, padding=0), ValueError, 'too small for kernel_size=7'),
    'weight not a tensor': (lambda x, w: involution(x, w.tolist(), 7), TypeError, 'weight must be a Tensor'),
    'bool stride': (lambda x, w: involution(x, w, 7, stride=True), ValueError, 'stride must be an int'),
    'huge stride': (lambda x, w: involution(x, w, 7, stride=2 ** 63), ValueError,
                    'stride must be at most 2147483647'),
    'huge kernel size, flat weight': (lambda x, w: involution(x, w.flatten(1, 3), 2 ** 40), ValueError,
                                      'kernel_size must be at most'),
}


@pytest.mark.parametrize('name', list(BAD_CALLS))
def test_bad_input_raises_clear_error(name):
    call, error, message = BAD_CALLS[name]
    x, w = _ok()
    with pytest.raises(error, match=message):
        call(x, w)


# The C++ op checks its arguments itself, so direct torch.ops calls cannot read out of bounds.
BAD_OP_CALLS = {
    'weight shape': (lambda x, w: torch.ops.involution_mm.involution(x, w[..., :-1], 7, 1, 1, 3),
                     'weight must have shape'),
    'groups': (lambda x, w: torch.ops.involution_mm.involution(x[:, :31], w, 7, 1, 1, 3),
               'cannot be split into 2 groups'),
    'padding': (lambda x, w: torch.ops.involution_mm.involution(x, w, 7, 1, 1, -1),
                'padding must be non-negative'),
    'dtype': (lambda x, w: torch.ops.involution_mm.involution(x.double(), w, 7, 1, 1, 3),
              'has dtype'),
    'grad_input size': (lambda x, w: torch.ops.involution_mm.involution_grad_input(
        torch.randn(2, 32, 9, 8), w, [10, 8], 7, 1, 1, 3), 'weight must have shape'),
    'grad_input grad size': (lambda x, w: torch.ops.involution_mm.involution_grad_input(
        torch.randn(2, 32, 9, 7), w, [9, 8], 7, 1, 1, 3), 'grad_output must be 9x8'),
    'grad_weight groups': (lambda x, w: torch.ops.involution_mm.involution_grad_weight(
        torch.randn(2, 32, 9, 8), x, 7, 1, 1, 3, 5), 'cannot be split into 5 groups'),
    'grad_weight grad shape': (lambda x, w: torch.ops.involution_mm.involution_grad_weight(
        torch.randn(2, 32, 9, 9), x, 7, 1, 1, 3, 2), 'grad_output must have shape'),
    'epilogue weight shape': (lambda x, w: torch.ops.involution_mm.involution_epilogue(
        x, w[..., :-1], 7, 1, 1, 3, None, None, True), 'weight must have shape'),
    'epilogue scale shape': (lambda x, w: torch.ops.involution_mm.involution_epilogue(
        x, w, 7, 1, 1, 3, torch.ones(16), None, True), r'scale must have shape \(32,\)'),
    'epilogue shift dtype': (lambda x, w: torch.ops.involution_mm.involution_epilogue(
        x, w, 7, 1, 1, 3, None, torch.ones(32, dtype=torch.float64), False),
        'shift must be Float'),
    'epilogue scale on meta': (lambda x, w: torch.ops.involution_mm.involution_epilogue(
        x, w, 7, 1, 1, 3, torch.ones(32, device='meta'), None, True),
        'scale must be torch.float32 on cpu like the input, got torch.float32 on meta'),
    'epilogue meta scale shape': (lambda x, w: torch.ops.involution_mm.involution_epilogue(
        x.to('meta'), w.to('meta'), 7, 1, 1, 3, torch.ones(16, device='meta'), None, True),
        r'scale must have shape \(32,\)'),
}


@pytest.mark.parametrize('name', list(BAD_OP_CALLS))
def test_raw_op_rejects_bad_input(name):
    call, message = BAD_OP_CALLS[name]
    x, w = _ok()
    with pytest.raises(ValueError, match=message):
        call(x, w)


# ---- other instruction sets and the fallback ------------------------------------------------

def _run_python(code, env=None):
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


PARITY_SCRIPT = '''
    import itertools
    import torch
    from involution_mm.ops import involution, involution_out_size, involution_reference
    print(torch.ops.involution_mm.cpu_kernel_isa())
    torch.manual_seed(0)
    for (k, s, d) in [(7, 1, 1), (3, 1, 2), (3, 2, 1), (5, 2, 2), (1, 1, 1)]:
        # Rows of 26 pixels hold whole register blocks of the dense kernels of every build
        # (12 pixels with AVX2 and 8-channel groups).
        sizes = [(11, 9), (4, 26)] if (k, s, d) == (7, 1, 1) else [(11, 9)]
        for (c, g), (h, w_) in itertools.product([(16, 1), (32, 2), (64, 2), (12, 3), (8, 1)], sizes):
            for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float64, 1e-9)]:
                p = d * (k - 1) // 2
                ho, wo = (involution_out_size(n, k, s, d, p) for n in (h, w_))
                x = torch.randn(2, c, h, w_).to(dtype).requires_grad_()
                wt = torch.randn(2, g, k, k, ho, wo).to(dtype).requires_grad_()
                go = torch.randn(2, c, ho, wo).to(dtype)
                out = involution(x, wt, k, s, d)
                gx, gw = torch.autograd.grad(out, (x, wt), go)
                x64, w64 = x.detach().double().requires_grad_(), wt.detach().double().requires_grad_()
                ref = involution_reference(x64, w64, k, s, d)
                rgx, rgw = torch.autograd.grad(ref, (x64, w64), go.double())
                for a, e in ((out, ref), (gx, rgx), (gw, rgw)):
                    torch.testing.assert_close(a.double(), e.detach(), atol=tol * 10, rtol=tol)
    # An infinity reaches only the outputs whose windows hold it: the flat kernels' vectors
    # also cover pixels of the neighbouring row, which the lane masks must keep out.
    for dtype in (torch.float32, torch.float64):
        for (k, d) in [(7, 1), (3, 2)]:
            p = d * (k - 1) // 2
            x = torch.randn(1, 16, 9, 10, dtype=dtype)
            x[0, :, 4, 0] = float('inf')
            x[0, :, 2, 9] = float('-inf')
            wt = torch.rand(1, 1, k, k, 9, 10, dtype=dtype) + 0.5
            go = torch.zeros(1, 16, 9, 10, dtype=dtype)
            go[0, :, 6, 9] = float('inf')
            torch.testing.assert_close(involution(x, wt, k, 1, d), involution_reference(x, wt, k, 1, d))
            gx = torch.ops.involution_mm.involution_grad_input(go, wt, [9, 10], k, 1, d, p)
            x_ref = torch.zeros_like(x, requires_grad=True)
            (rgx,) = torch.autograd.grad(involution_reference(x_ref, wt, k, 1, d), x_ref, go)
            torch.testing.assert_close(gx, rgx)
            gw = torch.ops.involution_mm.involution_grad_weight(go.nan_to_num(posinf=1.0), x, k, 1, d, p, 1)
            w_ref = wt.clone().requires_grad_()
            (rgw,) = torch.autograd.grad(involution_reference(x, w_ref, k, 1, d), w_ref,
                                         go.nan_to_num(posinf=1.0))
            torch.testing.assert_close(gw, rgw, equal_nan=True)
    # The epilogue of each build: relu(out * scale + shift) per channel, NCHW and channels_last.
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 1e-2)]:
        for (c, g), (h, w_), (k, s) in itertools.product([(32, 2), (12, 3)], [(11, 9), (4, 26)],
                                                         [(7, 1), (3, 2)]):
            p = (k - 1) // 2
            ho, wo = (involution_out_size(n, k, s, 1, p) for n in (h, w_))
            wt = torch.randn(2, g, k, k, ho, wo).to(dtype)
            scale, shift = (torch.rand(c) + 0.5).to(dtype), torch.randn(c).to(dtype)
            for x in (torch.randn(2, c, h, w_).to(dtype),
                      torch.randn(2, c, h, w_).to(dtype).contiguous(memory_format=torch.channels_last)):
                out = torch.ops.involution_mm.involution_epilogue(x, wt, k, s, 1, p, scale, shift, True)
                want = (involution(x, wt, k, s).double() * scale.double()[:, None, None]
                        + shift.double()[:, None, None]).relu()
                torch.testing.assert_close(out.double(), want, atol=tol * 10, rtol=tol)
'''


@pytest.mark.parametrize('isa', ['default', 'avx2', 'avx512'])
def test_every_kernel_build_matches_reference(isa):
    """Each instruction-set build of the kernels, forced as PyTorch's own are."""
    result = _run_python(PARITY_SCRIPT, env={'ATEN_CPU_CAPABILITY': isa})
    ran = result.stdout.strip().splitlines()[0]
    if ran != isa:
        pytest.skip(f'this CPU cannot run the {isa} build (ran {ran}); the other builds passed')


def test_fallback_without_extension_warns_once_and_matches():
    code = '''
        import sys, warnings
        sys.modules['involution_mm._C'] = None  # as if the extension had not been built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import torch
            from involution_mm.ops import (HAS_EXTENSION, involution, involution_reference,
                                           kernel_conv_involution)
            assert not HAS_EXTENSION
            x = torch.randn(2, 32, 9, 8, requires_grad=True)
            reduced = torch.randn(2, 8, 5, 4, requires_grad=True)
            out = kernel_conv_involution(x, reduced, torch.randn(98, 8, 1, 1), None, 7, 2)
            out.sum().backward()
            assert out.shape == (2, 32, 5, 4) and x.grad.shape == x.shape
            assert reduced.grad.shape == reduced.shape
            w = torch.randn(2, 2, 7, 7, 9, 8)
            assert torch.equal(involution(x, w, 7), involution_reference(x, w, 7))
        messages = [str(w.message) for w in caught if 'compiled extension' in str(w.message)]
        assert len(messages) == 1, messages
        print('fallback ok')
    '''
    assert 'fallback ok' in _run_python(code).stdout


def test_package_imports_without_openmmlab():
    """The op layer needs torch alone: without mmengine/mmcv the package imports, warns once
    and names what is missing; using a model then raises ImportError saying why."""
    code = '''
        import sys, warnings
        sys.modules['mmengine'] = sys.modules['mmcv'] = None  # as if not installed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import torch
            import involution_mm
            from involution_mm.ops import involution, involution_reference
        messages = [str(w.message) for w in caught if 'only the op layer' in str(w.message)]
        assert len(messages) == 1 and "'mmengine' is not installed" in messages[0], messages
        assert sorted(involution_mm.UNAVAILABLE) == [
            'Involution', 'InvolutionFPN', 'RedNet', 'engine', 'models', 'registry']
        for get in (lambda: involution_mm.RedNet, lambda: involution_mm.ops.Involution):
            try:
                get()
            except ImportError as err:
                assert 'mmcv' in str(err), err
            else:
                raise AssertionError('no ImportError')
        x, w = torch.randn(1, 16, 5, 5), torch.randn(1, 1, 3, 3, 5, 5)
        torch.testing.assert_close(involution(x, w, 3), involution_reference(x, w, 3))
        print('op layer ok')
    '''
    assert 'op layer ok' in _run_python(code).stdout
