"""Run by tests/test_involution_invalid_args.py in a child process (a crash of the op then
fails one test instead of killing pytest): calls ``involution()`` with random, mostly
invalid arguments (hypothesis) and accepts only a ValueError/RuntimeError whose message
names involution, or a result equal to the unfold reference in float64.

Before each call it prints the call, so a crash leaves the arguments that caused it as the
last line of stdout. Usage: python involution_invalid_args_child.py MAX_EXAMPLES SEED
"""
import math
import sys

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from involution_mm.ops import involution, involution_out_size, involution_reference

TOLERANCES = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 6e-2,
              torch.float16: 1e-2}

# ints near every boundary, huge ones (overflow), and values of other types
ODD_VALUES = [-2 ** 63, -7, -1, 0, 2 ** 31, 2 ** 63, 2 ** 70, True, False, 3.0, 1.5, '3',
              None, float('nan'), [3], torch.tensor(3)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
          torch.bool, torch.complex64]


@st.composite
def calls(draw):
    # one call in four has every argument of a valid kind, so that results get compared too
    plausible = draw(st.integers(0, 3)) == 0

    def hyper(valid):
        return valid if plausible else st.one_of(valid, st.sampled_from(ODD_VALUES))

    kernel_size = draw(hyper(st.integers(1, 6)))
    stride = draw(hyper(st.integers(1, 3)))
    dilation = draw(hyper(st.integers(1, 3)))
    padding = draw(hyper(st.one_of(st.none(), st.integers(0, 4))))
    low = 1 if plausible else 0
    b, g, cg = draw(st.integers(low, 2)), draw(st.integers(low, 3)), draw(st.integers(low, 4))
    h, w = draw(st.integers(low, 9)), draw(st.integers(low, 9))
    x_shape = [b, g * cg, h, w]
    if not plausible and draw(st.integers(0, 9)) == 0:  # wrong rank
        x_shape = x_shape[:draw(st.integers(0, 3))] + [2] * draw(st.integers(0, 2))
    x_dtype = draw(st.sampled_from(DTYPES[:4] if plausible else DTYPES))
    w_dtype = x_dtype if plausible or draw(st.booleans()) else draw(st.sampled_from(DTYPES))
    # the weight: the right shape for these arguments where they allow one, else perturbed
    ints = all(type(v) is int for v in (kernel_size, stride, dilation))
    k = kernel_size if ints and 0 < kernel_size < 8 else 3
    p = padding if type(padding) is int and 0 <= padding < 8 else (
        dilation * (k - 1) // 2 if ints and 0 < dilation < 8 else 1)
    s = stride if ints and 0 < stride < 8 else 1
    d = dilation if ints and 0 < dilation < 8 else 1
    ho = max(involution_out_size(h, k, s, d, p), 0)
    wo = max(involution_out_size(w, k, s, d, p), 0)
    w_shape = [b, g, k, k, ho, wo]
    if not plausible and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, 5))
        w_shape[i] = draw(st.integers(0, 9))
    if draw(st.booleans()):
        w_shape = [w_shape[0], w_shape[1] * w_shape[2] * w_shape[3]] + w_shape[4:]
    kind = draw(st.sampled_from(['tensors'] if plausible else
                                ['tensors'] * 8 + ['list input', 'list weight']))
    return dict(x_shape=x_shape, x_dtype=x_dtype, w_shape=w_shape, w_dtype=w_dtype,
                kernel_size=kernel_size, stride=stride, dilation=dilation, padding=padding,
                kind=kind, seed=draw(st.integers(0, 2 ** 16)))


def make(shape, dtype, gen):
    values = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return values.to(dtype) if dtype.is_floating_point or dtype.is_complex else \
        (values > 0).to(dtype)


#: how the calls ended: 'error' (a named ValueError/RuntimeError) or 'result'
OUTCOMES = {'error': 0, 'result': 0}


def run(case):
    gen = torch.Generator().manual_seed(case['seed'])
    x = make(case['x_shape'], case['x_dtype'], gen)
    w = make(case['w_shape'], case['w_dtype'], gen)
    if case['kind'] == 'list input':
        x = x.tolist()
    elif case['kind'] == 'list weight':
        w = w.tolist()
    args = (case['kernel_size'], case['stride'], case['dilation'], case['padding'])
    print('CALL', case, flush=True)
    try:
        out = involution(x, w, *args)
    except (ValueError, RuntimeError) as err:
        assert 'involution' in str(err), f'error not naming involution: {err!r} for {case}'
        OUTCOMES['error'] += 1
        return
    # a result: it must be the reference's, computed in float64 from the same inputs
    expected = involution_reference(x.double(), w.double(), *args)
    assert out.dtype == x.dtype and out.shape == expected.shape, (case, out.shape)
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 1.0)
    tol = TOLERANCES[x.dtype] * scale
    err = (out.double() - expected).abs().max().item() if out.numel() else 0.0
    assert math.isfinite(err) and err <= tol, f'result differs by {err} (tol {tol}): {case}'
    OUTCOMES['result'] += 1


def main(max_examples, seed_value):
    @seed(seed_value)
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=calls())
    def check(case):
        run(case)

    check()
    print(f"DONE errors={OUTCOMES['error']} results={OUTCOMES['result']}", flush=True)


if __name__ == '__main__':
    main(int(sys.argv[1]), int(sys.argv[2]))
