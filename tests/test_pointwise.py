"""1x1 convs as a GEMM (involution_mm.ops.pointwise): conv2d's values, gradients, errors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcv.cnn import ConvModule

from involution_mm.ops.pointwise import (_folds_batch, conv1x1, conv1x1_backward,
                                         conv_module_forward, conv_norm_act, pointwise_conv,
                                         pointwise_conv_backward)

# (B, C, H, W, O): per-image GEMMs, and the batch folded into one GEMM (many channels, few
# pixels, as at RedNet's last stage)
SHAPES = {'per_image': (3, 12, 7, 9, 5), 'folded': (3, 32, 2, 2, 16)}


def test_shapes_cover_both_gemm_forms():
    assert not _folds_batch(3, 12, 5, 7 * 9)
    assert _folds_batch(3, 32, 16, 2 * 2)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
def test_values_and_gradients_are_conv2d(shape, bias, layout):
    torch.manual_seed(0)
    batch, c, h, width, o = SHAPES[shape]
    x = torch.randn(batch, c, h, width, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'strided':
        x = torch.randn(batch, c, h, 2 * width, dtype=torch.float64)[..., ::2]
    w = torch.randn(o, c, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(o, dtype=torch.float64, requires_grad=True) if bias else None
    x.requires_grad_()
    torch.testing.assert_close(conv1x1(x, w, b), F.conv2d(x, w, b))
    assert torch.autograd.gradcheck(conv1x1, (x, w, b))


@pytest.mark.parametrize('shape', SHAPES)
def test_autocast_gives_the_dtype_conv2d_gives(shape):
    batch, c, h, width, o = SHAPES[shape]
    x, w, b = torch.randn(batch, c, h, width), torch.randn(o, c, 1, 1), torch.randn(o)
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


def test_hooks_see_every_call():
    """A forward hook (FLOPs counters, feature extraction) or a pre-hook that rewrites the
    weight (spectral norm) must run: such convs and ConvModules keep their own __call__."""
    x = torch.randn(2, 8, 6, 6)
    conv = nn.Conv2d(8, 4, 1)
    seen = []
    conv.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    pointwise_conv(x, conv)
    assert seen == [(2, 4, 6, 6)]
    normed = nn.utils.spectral_norm(nn.Conv2d(8, 4, 1)).eval()
    torch.testing.assert_close(pointwise_conv(x, normed), normed(x))
    module = ConvModule(8, 4, 1, norm_cfg=dict(type='BN'))
    module.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    torch.testing.assert_close(conv_module_forward(module, x), module(x))
    assert len(seen) == 3
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(type(mod)))
    try:
        pointwise_conv(x, nn.Conv2d(8, 4, 1))
    finally:
        handle.remove()
    assert seen[-1] is nn.Conv2d


def test_conv_module_forward_keeps_other_orders():
    x = torch.randn(2, 8, 6, 6)
    for module in (ConvModule(8, 4, 1, norm_cfg=dict(type='BN'), order=('norm', 'conv', 'act')),
                   ConvModule(8, 4, 1, padding=1, padding_mode='reflect')):
        module.eval()
        torch.testing.assert_close(conv_module_forward(module, x), module(x))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mask', [(True, True, True), (True, False, False), (False, True, False),
                                  (False, False, True)])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_backward_is_conv2d_backward(shape, mask, layout):
    torch.manual_seed(0)
    batch, c, h, width, o = SHAPES[shape]
    x = torch.randn(batch, c, h, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, 1, 1, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(batch, o, h, width, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = torch.autograd.grad(F.conv2d(x, weight, bias), (x, weight, bias), grad_out)
    got = conv1x1_backward(grad_out, x.detach(), weight.detach(), mask)
    for wanted, g, e in zip(mask, got, expected):
        if wanted:
            torch.testing.assert_close(g, e)
        else:
            assert g is None


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('accumulate_layout', ['contiguous', 'channels_last', 'float32'])
@pytest.mark.parametrize('x_layout', ['contiguous', 'channels_last'])
def test_backward_adds_the_input_gradient_into_accumulate(shape, accumulate_layout, x_layout):
    # the GEMM adds into a contiguous accumulator of its dtype; any other takes an add pass
    torch.manual_seed(0)
    batch, c, h, width, o = SHAPES[shape]
    x = torch.randn(batch, c, h, width, dtype=torch.float64)
    if x_layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 1, 1, dtype=torch.float64)
    grad_out = torch.randn(batch, o, h, width, dtype=torch.float64)
    accumulate = torch.randn(batch, c, h, width, dtype=torch.float64)
    if accumulate_layout == 'channels_last':
        accumulate = accumulate.contiguous(memory_format=torch.channels_last)
    elif accumulate_layout == 'float32':
        accumulate = accumulate.float()
    expected_x, expected_weight, _ = conv1x1_backward(grad_out, x, weight, (True, True, False))
    expected_x = (accumulate + expected_x).to(accumulate.dtype)
    grad_x, grad_weight, grad_bias = conv1x1_backward(grad_out, x, weight, (True, True, False),
                                                      accumulate)
    assert grad_x is accumulate and grad_bias is None
    torch.testing.assert_close(grad_x, expected_x)
    torch.testing.assert_close(grad_weight, expected_weight)


@pytest.mark.parametrize('stride', [2, 3, (2, 1)])
@pytest.mark.parametrize('size', [(7, 7), (8, 5)])
def test_strided_1x1_conv_takes_every_strided_pixel(stride, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 1, stride=stride, bias=False).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    out = pointwise_conv(x, conv)
    torch.testing.assert_close(out, conv(x))
    assert torch.autograd.gradcheck(lambda t: pointwise_conv(t, conv), (x,))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('stride', [1, 2])
def test_pointwise_conv_keeps_its_input_not_a_copy(shape, stride):
    """Autograd through the GEMMs would keep their operands: the strided pixels, or the
    folded batch's transposed copy, each a second tensor with values x already holds."""
    batch, c, h, width, o = SHAPES[shape]
    conv = nn.Conv2d(c, o, 1, stride=stride, bias=True)
    x = torch.randn(batch, c, h, width, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = pointwise_conv(x, conv)
    storages = {t.untyped_storage().data_ptr() for t in saved}
    assert storages == {x.untyped_storage().data_ptr(), conv.weight.untyped_storage().data_ptr()}
    grads = torch.autograd.grad(out.sum(), (x, conv.weight, conv.bias))
    expected = torch.autograd.grad(conv(x).sum(), (x, conv.weight, conv.bias))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize('stride', [(1, 1), (2, 1)])
@pytest.mark.parametrize('mask', [(True, True, True), (False, True, False)])
def test_backward_op_agrees_with_its_fake_kernel(stride, mask):
    """The op torch.compile calls as it is: its fake kernel's shapes and dtypes (empty
    placeholders where the mask is false) are the real ones."""
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    weight = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    grad = torch.randn(2, 3, *x[:, :, ::stride[0], ::stride[1]].shape[2:], dtype=torch.float64)
    torch.library.opcheck(pointwise_conv_backward, (grad, x, weight, stride, mask))


def test_pointwise_conv_under_autocast_gives_float32_gradients():
    conv = nn.Conv2d(32, 16, 1, stride=2)
    x = torch.randn(3, 32, 4, 4, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = pointwise_conv(x, conv)
        expected = conv(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), (x, conv.weight, conv.bias))
    expected_grads = torch.autograd.grad(expected.float().sum(), (x, conv.weight, conv.bias))
    for g, e in zip(grads, expected_grads):
        assert g.dtype == e.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=0.05, rtol=0.02)


# (B, C, H, W, O): one tile per image; tiles of pixels with a partial last one (few output
# channels give wide tiles, so 150x150 pixels need several); tiles of output channels (more
# channels than pixels) with a partial last one, at batch 1
EPILOGUE_SHAPES = {'one_tile': (2, 12, 5, 7, 20), 'tiles': (2, 3, 150, 150, 4),
                   'channel_tiles': (1, 8, 3, 3, 8010)}


@pytest.mark.parametrize('shape', EPILOGUE_SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('scale', [False, True])
@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('residual', [False, True])
@pytest.mark.parametrize('relu', [False, True])
def test_conv1x1_epilogue_is_its_layers(shape, dtype, scale, shift, residual, relu):
    torch.manual_seed(0)
    batch, c, h, width, o = EPILOGUE_SHAPES[shape]
    x = torch.randn(batch, c, h, width, dtype=dtype)
    w = torch.randn(o, c, 1, 1, dtype=dtype)
    s = torch.rand(o, dtype=dtype) + 0.5 if scale else None
    t = torch.randn(o, dtype=dtype) if shift else None
    r = torch.randn(batch, o, h, width, dtype=dtype) if residual else None
    expected = F.conv2d(x, w)
    if s is not None:
        expected = expected * s.view(-1, 1, 1)
    if t is not None:
        expected = expected + t.view(-1, 1, 1)
    if r is not None:
        expected = expected + r
    if relu:
        expected = expected.relu()
    out = torch.ops.involution_mm.conv1x1_epilogue(x, w, s, t, r, relu)
    torch.testing.assert_close(out, expected)


def test_conv1x1_epilogue_takes_strided_input_and_keeps_nan():
    x = torch.randn(1, 6, 5, 10)[..., ::2]
    x[0, :, 1, 1] = float('nan')
    w = torch.randn(3, 6, 1, 1)
    out = torch.ops.involution_mm.conv1x1_epilogue(x, w, None, None, None, True)
    assert out.is_contiguous()
    torch.testing.assert_close(out, F.conv2d(x, w).relu(), equal_nan=True)
    assert out[0, :, 1, 1].isnan().all()


@pytest.mark.parametrize('args, match', [
    ((torch.randn(2, 6, 4), torch.randn(3, 6, 1, 1)), r'input must be \(B, C, H, W\)'),
    ((torch.randn(1, 6, 4, 4, dtype=torch.float16), torch.randn(3, 6, 1, 1)),
     'input must be float32 or float64'),
    ((torch.randn(1, 0, 4, 4), torch.randn(3, 0, 1, 1)), 'at least one channel'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 5, 1, 1)), r'weight must be \(O, 6, 1, 1\)'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 6, 3, 3)), r'weight must be \(O, 6, 1, 1\)'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 6, 1, 1, dtype=torch.float64)),
     'weight must be Float'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 6, 1, 1), torch.randn(4)),
     r'scale must have shape \(3,\)'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 6, 1, 1), None, torch.randn(3).double()),
     'shift must be Float'),
    ((torch.randn(1, 6, 4, 4), torch.randn(3, 6, 1, 1), None, None, torch.randn(1, 3, 4, 5)),
     r'residual must have the output\'s shape \[1, 3, 4, 4\]'),
], ids=['3d', 'half', 'no_channels', 'channels', 'kernel_3x3', 'weight_dtype', 'scale_shape',
        'shift_dtype', 'residual_shape'])
def test_conv1x1_epilogue_errors(args, match):
    args = args + (None,) * (5 - len(args))
    with pytest.raises(ValueError, match=match):
        torch.ops.involution_mm.conv1x1_epilogue(*args, True)


def _conv_norm_relu(norm_training=False):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.2, 0.2)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.train(norm_training)
    return conv, bn, nn.ReLU(inplace=True)


def _calls_epilogue(fn):
    with torch.profiler.profile() as prof:
        fn()
    return any(e.name == 'involution_mm::conv1x1_epilogue' for e in prof.events())


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('norm', ['bn', 'identity', 'none'])
def test_conv_norm_act_in_inference_is_its_layers_in_one_op(stride, norm):
    conv, bn, relu = _conv_norm_relu()
    conv.stride = (stride, stride)
    norm = {'bn': bn, 'identity': nn.Identity(), 'none': None}[norm]
    x = torch.randn(2, 8, 9, 7)
    identity = torch.randn(2, 6, 9 // stride + 9 % stride, 7 // stride + 7 % stride)
    layers = conv(x) if norm is None else norm(conv(x))
    expected = (layers + identity).relu()
    with torch.no_grad():
        torch.testing.assert_close(conv_norm_act(x, conv, norm, relu, identity), expected)
        assert _calls_epilogue(lambda: conv_norm_act(x, conv, norm, relu, identity))


def test_conv_norm_act_runs_the_layers_where_the_op_does_not_apply():
    x = torch.randn(2, 8, 5, 5)
    conv, bn, relu = _conv_norm_relu()
    expected = relu(bn(conv(x)))
    out = conv_norm_act(x, conv, bn, relu)  # gradients wanted
    assert out.requires_grad
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        training_bn = _conv_norm_relu(norm_training=True)[1]
        for args in ((x.contiguous(memory_format=torch.channels_last), conv, bn, relu),
                     (x, conv, training_bn, relu), (x, conv, bn, nn.GELU())):
            assert not _calls_epilogue(lambda: conv_norm_act(*args))
            torch.testing.assert_close(conv_norm_act(*args), args[3](args[2](args[1](args[0]))))
        bn.register_forward_hook(lambda *_: None)
        assert not _calls_epilogue(lambda: conv_norm_act(x, conv, bn, relu))


def test_conv_module_forward_in_channels_last_inference_is_one_onednn_op():
    conv, bn, _ = _conv_norm_relu()
    module = ConvModule(8, 6, 1, norm_cfg=dict(type='BN')).eval()
    module.conv.load_state_dict(conv.state_dict(), strict=False)
    module.bn.load_state_dict(bn.state_dict())
    x = torch.randn(2, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = module(x)
        with torch.profiler.profile() as prof:
            out = conv_module_forward(module, x)
    names = {e.name for e in prof.events()}
    assert 'mkldnn::_convolution_pointwise' in names and 'aten::batch_norm' not in names
    torch.testing.assert_close(out, expected)


def test_training_conv_norm_act_with_residual_matches_its_layers():
    conv, bn, relu = _conv_norm_relu(norm_training=True)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    identity = torch.randn(2, 6, 5, 5, requires_grad=True)
    out = conv_norm_act(x, conv, bn, relu, identity)
    grads = torch.autograd.grad(out.square().sum(), (x, identity, conv.weight, bn.weight))
    expected = relu(bn(conv(x)) + identity)
    want = torch.autograd.grad(expected.square().sum(), (x, identity, conv.weight, bn.weight))
    torch.testing.assert_close(out, expected)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref)
