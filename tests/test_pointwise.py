"""1x1 convs as a GEMM (involution_mm.ops.pointwise): conv2d's values, gradients, errors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from involution_mm.ops.pointwise import conv1x1, pointwise_conv


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
def test_values_and_gradients_are_conv2d(bias, layout):
    torch.manual_seed(0)
    x = torch.randn(3, 12, 7, 9, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'strided':
        x = torch.randn(3, 12, 7, 18, dtype=torch.float64)[..., ::2]
    w = torch.randn(5, 12, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    x.requires_grad_()
    torch.testing.assert_close(conv1x1(x, w, b), F.conv2d(x, w, b))
    assert torch.autograd.gradcheck(conv1x1, (x, w, b))


def test_autocast_gives_the_dtype_conv2d_gives():
    x, w, b = torch.randn(2, 8, 5, 5), torch.randn(4, 8, 1, 1), torch.randn(4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, expected = conv1x1(x, w, b), F.conv2d(x, w, b)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.02)


def test_wrong_channels_get_conv2d_error():
    with pytest.raises(RuntimeError, match='expected input.*to have 8 channels'):
        conv1x1(torch.randn(1, 6, 4, 4), torch.randn(4, 8, 1, 1))


def test_pointwise_conv_only_rewrites_plain_1x1_convs():
    x = torch.randn(2, 8, 6, 6)
    for conv in (nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1, stride=2), nn.Conv2d(8, 4, 3, padding=1),
                 nn.Conv2d(8, 4, 1, groups=2)):
        torch.testing.assert_close(pointwise_conv(x, conv), conv(x))
