"""The involution op on random shapes and hyper-parameters (hypothesis) against the
unfold reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from involution_op_testing import (assert_matches, make_inputs, op_with_grads,
                                   reference_with_grads)

from involution_mm.ops import HAS_EXTENSION

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason='the compiled extension is not built')


@given(batch=st.integers(1, 2), groups=st.integers(1, 3), group_channels=st.integers(1, 17),
       height=st.integers(1, 12), width=st.integers(1, 12), kernel_size=st.sampled_from([1, 3, 5, 7]),
       stride=st.integers(1, 3), dilation=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
@settings(max_examples=40, deadline=None)
def test_random_shapes_match_reference(batch, groups, group_channels, height, width,
                                       kernel_size, stride, dilation, seed):
    x, w, p = make_inputs(batch, groups * group_channels, groups, height, width, kernel_size,
                          stride, dilation, seed=seed)
    grad_out = torch.randn(batch, groups * group_channels, *w.shape[-2:],
                           generator=torch.Generator().manual_seed(seed))
    got = op_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    want = reference_with_grads(x, w, kernel_size, stride, dilation, p, grad_out)
    for name, a, e in zip(('output', 'grad_input', 'grad_weight'), got, want):
        assert_matches(a, e, torch.float32, name)
