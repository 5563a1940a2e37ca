"""Recomputing chains: the same values and gradients as the layers one by one, less saved."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from involution_mm.models import RedNet
from involution_mm.models.backbones.rednet import Bottleneck
from involution_mm.ops import Involution
from involution_mm.ops.recompute import make_chain

def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def _randomise_norms(model):
    """Affine parameters away from 1 and 0 (bn3 is zero-initialised), so every branch of
    every block carries gradient."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)


def _twin_rednets(dtype, **kwargs):
    torch.manual_seed(0)
    chained = RedNet(26, out_indices=(0, 1, 2, 3), stem_kernel_size=7, **kwargs)
    chained.init_weights()
    _randomise_norms(chained)
    plain = RedNet(26, out_indices=(0, 1, 2, 3), stem_kernel_size=7,
                   recompute_activations=False, **kwargs)
    plain.load_state_dict(chained.state_dict())
    return chained.to(dtype).train(), plain.to(dtype).train()


def _step(model, x):
    """Outputs, input gradient, parameter gradients and buffers after one training step."""
    x = x.detach().clone().requires_grad_()
    outs = model(x)
    sum((o * o).mean() for o in outs).backward()
    return (list(outs) + [x.grad] + [p.grad for p in model.parameters()]
            + list(model.buffers()))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
    dict(style='caffe', avg_down=True),
    dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),  # one process: nothing to sync
], ids=['default', 'dilated', 'caffe', 'syncbn'])
def test_rednet_chains_give_the_plain_results(kwargs):
    chained, plain = _twin_rednets(torch.float64, **kwargs)
    x = torch.randn(2, 3, 67, 61, dtype=torch.float64)  # odd sizes: the ceil-mode pools
    results = [_step(m, x) for m in (chained, plain)]
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        assert_close(a, b)
    # both ran their own path: the chains keep less
    assert _saved_bytes(chained, x) < 0.8 * _saved_bytes(plain, x)


def test_rednet_chains_in_float32_are_as_accurate_as_the_plain_layers():
    """Against the float64 result, tensor by tensor. This network at batch 2 is poorly
    conditioned in float32 (BNs over 12 values in the last stage): the plain layers miss
    the float64 gradients by up to 1e-2 of their scale, so the bound is relative to that."""
    chained, plain = _twin_rednets(torch.float32)
    _, reference = _twin_rednets(torch.float64)
    x = torch.randn(2, 3, 67, 61, dtype=torch.float64)
    errors = {'chain': 0, 'plain': 0}
    for a, b, ref in zip(_step(chained, x.float()), _step(plain, x.float()), _step(reference, x)):
        scale = max(ref.abs().max().item(), 1e-6)
        for name, result in (('chain', a), ('plain', b)):
            error = (result.double() - ref).abs().max().item() / scale
            errors[name] = max(errors[name], error)
    assert errors['chain'] <= 2 * errors['plain']


def _saved_storages(model, x):
    """[(bytes, dims)] of the distinct storages a training forward saves for backward,
    parameters and buffers not counted."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            storages[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dim())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return list(storages.values())


def _saved_bytes(model, x):
    return sum(n for n, _ in _saved_storages(model, x))


def test_chain_is_the_true_derivative_in_training():
    """gradcheck through a block in training mode (batch statistics): the recomputing
    backward against finite differences, not against the plain path."""
    torch.manual_seed(0)
    block = Bottleneck(32, 64, stride=2, downsample=nn.Sequential(
        nn.Conv2d(32, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))).double().train()
    _randomise_norms(block)
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64, requires_grad=True)
    names = ['bn1.weight', 'conv2.conv1.conv.weight', 'conv2.conv1.bn.bias',
             'conv2.conv2.conv.bias', 'bn2.weight', 'conv3.weight']
    params = dict(block.named_parameters())
    assert torch.autograd.gradcheck(
        lambda x, *p: torch.func.functional_call(block, dict(zip(names, p)), (x, )),
        (x, *(params[n] for n in names)))


def test_a_bottleneck_keeps_its_input_conv1_output_bn3_input_and_output():
    """Of a stride-1 block without shortcut conv: x (conv1's input), conv1's output (the
    chain's input), conv3's output (bn3's input) and the block's output (the last ReLU's)."""
    block = Bottleneck(256, 256).train()
    x = torch.randn(2, 256, 8, 8, requires_grad=True)
    channel = 2 * 8 * 8 * 4  # bytes of one channel of the batch

    def activations(model):  # in channels; the per-channel BN statistics left out
        return sorted(n // channel for n, dims in _saved_storages(model, x) if dims == 4)
    assert activations(block) == [64, 256, 256, 256]
    plain = copy.deepcopy(block)
    plain.recompute_activations = False
    # plus bn1's output (ReLU, the involution), the involution's output (bn2) and bn2's
    # output (ReLU, conv3)
    assert activations(plain) == [64, 64, 64, 64, 256, 256, 256]
    # and without the involution's own chain its kernel branch's conv and BN-ReLU outputs
    plain.conv2.recompute_kernel = False
    assert activations(plain) == [16, 16, 64, 64, 64, 64, 256, 256, 256]


def test_norm_eval_chains_use_the_running_statistics():
    chained, plain = _twin_rednets(torch.float64)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():  # running statistics of real batches
        for bn in chained.modules():
            if isinstance(bn, _BatchNorm):
                bn.momentum = None
        for _ in range(2):
            chained(x + 0.1 * torch.randn_like(x))
    plain.load_state_dict(chained.state_dict())
    for model in (chained, plain):
        model.norm_eval = True
        model.train()
    assert not any(bn.training for bn in chained.modules() if isinstance(bn, _BatchNorm))
    for a, b in zip(_step(chained, x), _step(plain, x)):
        assert_close(a, b)


def test_other_norms_hooks_and_inference_take_the_layers_one_by_one():
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    gn = Bottleneck(64, 64, norm_cfg=dict(type='GN', num_groups=4)).train()
    assert make_chain([gn.bn1, gn.relu, gn.conv2], x) is None
    block = Bottleneck(64, 64).train()
    modules = [block.bn1, block.relu, block.conv2, block.bn2, block.relu, block.conv3]
    assert make_chain(modules, x) is not None
    with torch.no_grad():
        assert make_chain(modules, x) is None
    assert make_chain(modules, x.detach().half()) is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert make_chain(modules, x) is None
    calls = []
    handle = block.conv2.register_forward_hook(lambda *args: calls.append(1))
    assert make_chain(modules, x) is None
    block(x).sum().backward()
    assert calls == [1]
    handle.remove()
    stored = Involution(64, 7, recompute_kernel=False)
    assert make_chain([stored], x) is None


def test_chains_update_the_running_statistics_as_batchnorm_does():
    chained, plain = _twin_rednets(torch.float64)
    for bn in (*chained.modules(), *plain.modules()):
        if isinstance(bn, _BatchNorm):
            bn.momentum = None  # cumulative average: uses num_batches_tracked
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for _ in range(2):
        _step(chained, x)
        _step(plain, x)
    for (name, a), b in zip(chained.named_buffers(), plain.buffers()):
        assert_close(a, b)


def test_a_single_value_per_channel_is_refused_as_batchnorm_does():
    block = Bottleneck(64, 64).train()
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        block(torch.randn(1, 64, 1, 1, requires_grad=True))
