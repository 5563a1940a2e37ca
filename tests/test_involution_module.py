"""The Involution layer: official parameter names, output sizes, norm configs, autocast."""
import copy

import pytest
import torch
import torch.nn as nn

from involution_mm.ops import Involution, involution, involution_reference
from involution_mm.ops.module import involution_norm_act
from involution_mm.ops.pooling import ceil_avg_pool, ceil_avg_pool_backward, max_pool


def test_official_parameter_names_and_shapes():
    module = Involution(64, 7, 1)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        'conv1.conv.weight': (16, 64, 1, 1),
        'conv1.bn.weight': (16,), 'conv1.bn.bias': (16,), 'conv1.bn.running_mean': (16,),
        'conv1.bn.running_var': (16,), 'conv1.bn.num_batches_tracked': (),
        'conv2.conv.weight': (196, 16, 1, 1), 'conv2.conv.bias': (196,),
    }


@pytest.mark.parametrize('size', [(8, 8), (7, 9), (15, 12), (1, 2)])
@pytest.mark.parametrize('stride', [1, 2, 3])
def test_output_size_is_ceil_of_input_over_stride(size, stride):
    module = Involution(32, 7, stride, group_channels=16).eval()
    out = module(torch.randn(2, 32, *size))
    assert out.shape == (2, 32, -(-size[0] // stride), -(-size[1] // stride))


def test_forward_is_the_op_on_the_generated_kernel():
    module = Involution(32, 5, 2, dilation=2, group_channels=8).eval()
    x = torch.randn(2, 32, 11, 10)
    kernel = module.conv2(module.conv1(ceil_avg_pool(x, 2)))
    expected = involution_reference(x, kernel, 5, 2, 2)
    torch.testing.assert_close(module(x), expected, atol=1e-4, rtol=1e-4)


def _involution_bn_relu(stride=1):
    torch.manual_seed(0)
    layer = Involution(32, 7, stride, group_channels=16).eval()
    bn = nn.BatchNorm2d(32).eval()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.2, 0.2)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return layer, bn, nn.ReLU(inplace=True)


def _calls_involution_epilogue(fn):
    with torch.profiler.profile() as prof:
        fn()
    return any(e.name == 'involution_mm::involution_epilogue' for e in prof.events())


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('norm', ['bn', 'identity', 'none'])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_involution_norm_act_in_inference_is_its_layers_in_one_op(stride, norm, layout):
    layer, bn, relu = _involution_bn_relu(stride)
    norm = {'bn': bn, 'identity': nn.Identity(), 'none': None}[norm]
    x = torch.randn(2, 32, 11, 9)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = layer(x)
        expected = (out if norm is None else norm(out)).relu()
        torch.testing.assert_close(involution_norm_act(x, layer, norm, relu), expected)
        assert _calls_involution_epilogue(lambda: involution_norm_act(x, layer, norm, relu))


def test_involution_norm_act_runs_the_layers_where_the_op_does_not_apply():
    layer, bn, relu = _involution_bn_relu()
    x = torch.randn(2, 32, 9, 8)
    with torch.no_grad():
        expected = relu(bn(layer(x)))
    out = involution_norm_act(x, layer, bn, relu)  # gradients wanted
    assert out.requires_grad
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        training_bn = nn.BatchNorm2d(32).train()
        bfloat16 = (x.bfloat16(), copy.deepcopy(layer).bfloat16(), copy.deepcopy(bn).bfloat16())
        for args in ((x, layer, training_bn, relu), (x, layer, bn, nn.GELU()), (*bfloat16, relu)):
            assert not _calls_involution_epilogue(lambda: involution_norm_act(*args))
            torch.testing.assert_close(involution_norm_act(*args),
                                       args[3](args[2](args[1](args[0]))))
        seen = []
        layer.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        assert not _calls_involution_epilogue(lambda: involution_norm_act(x, layer, bn, relu))
        assert seen == [(2, 32, 9, 8)]


@pytest.mark.parametrize('size', [(8, 6), (7, 9), (5, 5)])
@pytest.mark.parametrize('stride', [2, 3])
def test_ceil_avg_pool_equals_ceil_mode_avg_pool(size, stride):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    expected = nn.AvgPool2d(stride, stride, ceil_mode=True)(x)
    torch.testing.assert_close(ceil_avg_pool(x, stride), expected)
    assert torch.autograd.gradcheck(lambda t: ceil_avg_pool(t, stride), (x,))
    grad = torch.randn_like(expected)
    torch.testing.assert_close(ceil_avg_pool_backward(grad, size, stride),
                               torch.autograd.grad(expected, x, grad)[0])


@pytest.mark.parametrize('size', [(16, 16), (7, 9), (2, 3)])
@pytest.mark.parametrize('ceil_mode', [False, True])
def test_max_pool_through_channels_last_is_the_nchw_pool(size, ceil_mode):
    """With ReLU zeros as ties, as after the stem; the backward gets the NCHW gradient with
    the channels_last indices."""
    x = torch.randn(2, 5, *size).relu()
    args = (3, 2, 1, 1, ceil_mode)
    out, indices = max_pool(x, *args, return_indices=True)
    expected, expected_indices = nn.functional.max_pool2d(x, *args, return_indices=True)
    assert out.is_contiguous() and torch.equal(out, expected)
    assert torch.equal(indices, expected_indices)
    assert torch.equal(max_pool(x, *args), expected)
    grad = torch.randn_like(expected)
    assert torch.equal(
        torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *args[:2], [1, 1], [1, 1],
                                                        ceil_mode, indices),
        torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *args[:2], [1, 1], [1, 1],
                                                        ceil_mode, expected_indices))


def test_norm_and_act_cfg_reach_the_kernel_branch():
    module = Involution(32, 7, norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='GELU'))
    assert isinstance(module.conv1.gn, nn.GroupNorm) and isinstance(module.conv1.activate, nn.GELU)
    synced = Involution(32, 7, norm_cfg=dict(type='SyncBN'))
    assert isinstance(synced.conv1.bn, nn.SyncBatchNorm)
    assert set(synced.state_dict()) == set(Involution(32, 7).state_dict())


def test_autocast_on_cpu_runs_in_bfloat16_with_float32_gradients():
    module = Involution(32, 7, 2)
    x = torch.randn(2, 32, 9, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = module(x)
        # the conv branch makes a bfloat16 kernel for the float32 input: autocast unifies them
        mixed = involution(x, torch.randn(2, 2, 7, 7, 9, 8), 7)
    assert out.dtype == torch.bfloat16 and mixed.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in module.parameters())
    with torch.no_grad():
        torch.testing.assert_close(out.float(), module(x), atol=0.1, rtol=0.05)


def test_mixed_dtypes_outside_autocast_are_rejected():
    with pytest.raises(ValueError, match='input has dtype torch.float32 but weight has torch.bfloat16'):
        involution(torch.randn(1, 16, 5, 5), torch.randn(1, 1, 3, 3, 5, 5).bfloat16(), 3)


@pytest.mark.parametrize('kwargs,message', [
    (dict(channels=30), 'not divisible by group_channels=16'),
    (dict(channels=32, kernel_size=4), 'kernel_size must be odd'),
    (dict(channels=32, kernel_size=0), 'kernel_size must be a positive int'),
    (dict(channels=32, stride=0), 'stride must be a positive int'),
    (dict(channels=32, reduction_ratio=64), 'leaves no channels'),
    (dict(channels=32, group_channels=2.5), 'group_channels must be a positive int'),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Involution(**kwargs)


def test_wrong_input_channels_name_the_problem():
    with pytest.raises(RuntimeError, match='channels'):
        Involution(32, 7)(torch.randn(1, 16, 8, 8))


def _twin_modules(stride, dtype=torch.float64):
    """Two copies of one Involution: the kernel recomputed in backward, and stored."""
    torch.manual_seed(0)
    recompute = Involution(32, 7, stride).to(dtype)
    stored = Involution(32, 7, stride, recompute_kernel=False).to(dtype)
    stored.load_state_dict(recompute.state_dict())
    return recompute, stored


def _forward_backward(module, x, grad_out):
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    out = module(x)
    out.backward(grad_out)
    return [out, x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize('stride', [1, 2])
def test_recomputed_kernel_gives_the_stored_kernel_results(stride):
    recompute, stored = _twin_modules(stride)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    grad_out = torch.randn(2, 32, -(-9 // stride), -(-11 // stride), dtype=torch.float64)
    for a, b in zip(_forward_backward(recompute, x, grad_out),
                    _forward_backward(stored, x, grad_out)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and the recomputing backward is the true derivative of every input and parameter
    params = tuple(p for p in recompute.parameters())
    recompute.eval()  # BN statistics fixed, so the function is deterministic
    x = x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, *p: torch.func.functional_call(recompute, dict(zip(
            [n for n, _ in recompute.named_parameters()], p)), (x,)), (x, ) + params)


def test_recomputed_kernel_saves_no_kernel_tensor():
    recompute, stored = _twin_modules(1, torch.float32)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)

    def saved_numels(module):
        numels = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: numels.append(t.numel()) or t, lambda t: t):
            module(x)
        return numels
    kernel_numel = 2 * 2 * 49 * 16 * 16
    assert kernel_numel in saved_numels(stored)
    assert kernel_numel not in saved_numels(recompute)


def test_recomputed_kernel_under_autocast_matches_the_stored_kernel():
    recompute, stored = _twin_modules(2, torch.float32)
    x = torch.randn(2, 32, 9, 8)
    grad_out = torch.randn(2, 32, 5, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        results = [_forward_backward(m, x, grad_out) for m in (recompute, stored)]
    (out, *grads), (expected_out, *expected_grads) = results
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)  # the same forward
    for a, b in zip(grads, expected_grads):  # bfloat16 products summed in another order
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02 * b.abs().max().item())


def test_recomputed_kernel_with_an_empty_batch():
    recompute, _ = _twin_modules(1, torch.float32)
    recompute.eval()  # BN cannot train on an empty batch
    x = torch.randn(0, 32, 14, 14, requires_grad=True)
    out = recompute(x)
    out.sum().backward()
    assert out.shape == (0, 32, 14, 14) and x.grad.shape == x.shape
    assert all(p.grad is not None for p in recompute.conv2.parameters())


def test_kernel_conv_involution_rejects_a_conv_that_is_not_1x1():
    from involution_mm.ops import kernel_conv_involution
    with pytest.raises(ValueError, match='1x1 conv weight'):
        kernel_conv_involution(torch.randn(1, 16, 8, 8), torch.randn(1, 4, 8, 8),
                               torch.randn(49, 4, 3, 3), None, 7)


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    module = Involution(32, 7, 2)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(2, 32, 15, 12, requires_grad=True)
    eager_out = module(x)
    eager_out.square().sum().backward()
    eager_grads = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    x.grad = None
    module.zero_grad()
    compiled_out = compiled(x)
    compiled_out.square().sum().backward()
    compiled_grads = [x.grad] + [p.grad for p in module.parameters()]
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    for a, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
