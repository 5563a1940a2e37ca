"""RedNet: structure, keys, parameter counts, shapes, freezing, checkpointing, SyncBN."""
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from involution_mm.models import RedNet
from involution_mm.models.backbones.rednet import Bottleneck
from involution_mm.ops import Involution
from involution_mm.ops.pooling import max_pool

DEPTHS = (26, 38, 50, 101, 152)
STAGE_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                152: (3, 8, 36, 3)}
PUBLISHED_M = {26: 9.23, 38: 12.39, 50: 15.54, 101: 25.65, 152: 33.99}
# measured (backbone + fc 2048x1000 with bias); the stem involution has K*K*2*(8+1) params
EXACT = {
    3: {26: 9233166, 38: 12386986, 50: 15540806, 101: 25652950, 152: 33984582},
    7: {26: 9233886, 38: 12387706, 50: 15541526, 101: 25653670, 152: 33985302},
}
FC = 2048 * 1000 + 1000


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('depth', DEPTHS)
def test_param_counts_match_published(depth):
    counts = {k: n_params(RedNet(depth, stem_kernel_size=k)) + FC for k in (3, 7)}
    assert counts == {k: EXACT[k][depth] for k in (3, 7)}
    assert counts[7] - counts[3] == (49 - 9) * 2 * (8 + 1)
    # the published table (M, 2 decimals) matches the 7x7 stem for every depth, and the
    # released classification code (3x3 stem) for all but RedNet-152 (33.9846 M -> 33.98)
    assert round(counts[7] / 1e6, 2) == PUBLISHED_M[depth]
    assert abs(counts[3] / 1e6 - PUBLISHED_M[depth]) < 0.0061
    if depth != 152:
        assert round(counts[3] / 1e6, 2) == PUBLISHED_M[depth]


def _expected_stem_shapes(k):
    return {
        'stem.0.conv.weight': (32, 3, 3, 3),
        'stem.0.bn.weight': (32, ),
        'stem.1.conv1.conv.weight': (8, 32, 1, 1),
        'stem.1.conv1.bn.running_var': (8, ),
        'stem.1.conv1.bn.num_batches_tracked': (),
        'stem.1.conv2.conv.weight': (k * k * 2, 8, 1, 1),
        'stem.1.conv2.conv.bias': (k * k * 2, ),
        'stem.2.weight': (32, ),
        'stem.2.running_mean': (32, ),
        'stem.4.conv.weight': (64, 32, 3, 3),
        'stem.4.bn.bias': (64, ),
    }


@pytest.mark.parametrize('stem_k', (3, 7))
def test_rednet50_state_dict_keys_and_shapes(stem_k):
    sd = RedNet(50, stem_kernel_size=stem_k).state_dict()
    assert len(sd) == 449
    for key, shape in _expected_stem_shapes(stem_k).items():
        assert tuple(sd[key].shape) == shape, key
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    block = ['conv1.weight', 'conv2.conv1.conv.weight', 'conv2.conv2.conv.weight',
             'conv2.conv2.conv.bias', 'conv3.weight', 'downsample.0.weight']
    block += [f'{n}.{p}' for n in ('bn1', 'bn2', 'bn3', 'conv2.conv1.bn', 'downsample.1')
              for p in bn]
    assert sorted(k[len('layer1.0.'):] for k in sd if k.startswith('layer1.0.')) == sorted(block)
    shapes = {'layer1.0.conv1.weight': (64, 64, 1, 1),
              'layer1.0.conv2.conv1.conv.weight': (16, 64, 1, 1),
              'layer1.0.conv2.conv2.conv.weight': (196, 16, 1, 1),
              'layer1.0.conv2.conv2.conv.bias': (196, ),
              'layer1.0.conv3.weight': (256, 64, 1, 1),
              'layer1.0.downsample.0.weight': (256, 64, 1, 1),
              'layer4.0.conv2.conv2.conv.weight': (49 * 32, 128, 1, 1),
              'layer4.2.bn3.weight': (2048, )}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(('layer1.1.downsample', 'maxpool')) for k in sd)
    # every key belongs to the stem or layer1-4 (nothing extra, e.g. no fc)
    assert {k.split('.')[0] for k in sd} == {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}


@pytest.mark.parametrize('depth', DEPTHS)
def test_structure_and_output_shapes(depth):
    model = RedNet(depth, out_indices=(0, 1, 2, 3)).eval()
    for i, n in enumerate(STAGE_BLOCKS[depth]):
        layer = getattr(model, f'layer{i + 1}')
        assert len(layer) == n
        assert all(isinstance(b.conv2, Involution) and b.conv2.kernel_size == 7 for b in layer)
        assert layer[0].conv2.stride == (1, 2, 2, 2)[i]
    assert model.out_channels == (256, 512, 1024, 2048)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 16), (1, 512, 8, 8),
                                              (1, 1024, 4, 4), (1, 2048, 2, 2)]


def test_odd_input_sizes_and_out_indices():
    model = RedNet(26, out_indices=(1, 3)).eval()
    assert model.out_channels == (512, 2048)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 65, 71))
    assert isinstance(outs, tuple) and len(outs) == 2
    # stem conv s2 and max-pool: ceil(H/4); each stride-2 stage: ceil(H/2)
    assert tuple(outs[0].shape) == (2, 512, 9, 9)
    assert tuple(outs[1].shape) == (2, 2048, 3, 3)
    single = RedNet(26, out_indices=(3, )).eval()
    with torch.no_grad():
        out = single(torch.randn(1, 3, 64, 64))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize('strides,dilations,size', [
    ((1, 2, 1, 1), (1, 1, 2, 4), (16, 8, 8, 8)),      # output stride 8
    ((1, 2, 2, 1), (1, 1, 1, 2), (16, 8, 4, 4)),      # output stride 16
])
def test_dilated_variants(strides, dilations, size):
    model = RedNet(50, strides=strides, dilations=dilations, out_indices=(0, 1, 2, 3)).eval()
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        assert {b.conv2.dilation for b in layer} == {dilations[i]}
        assert layer[0].conv2.stride == strides[i]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == list(size)
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    contracted = RedNet(50, strides=strides, dilations=dilations, contract_dilation=True)
    assert contracted.layer4[0].conv2.dilation == max(dilations[3] // 2, 1)
    assert contracted.layer4[1].conv2.dilation == dilations[3]


def test_dilation_changes_the_result():
    torch.manual_seed(0)
    a = RedNet(26, strides=(1, 2, 1, 1), dilations=(1, 1, 1, 1)).eval()
    b = RedNet(26, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x)[0], b(x)[0])


def test_frozen_stages():
    model = RedNet(26, frozen_stages=2, out_indices=(0, 1, 2, 3))
    model.train()
    frozen = [model.stem, model.layer1, model.layer2]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert all(not n.training for n in m.modules() if isinstance(n, _BatchNorm))
    for m in (model.layer3, model.layer4):
        assert all(p.requires_grad for p in m.parameters())
        assert all(n.training for n in m.modules() if isinstance(n, _BatchNorm))
    stats = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    for m in frozen:
        assert all(p.grad is None for p in m.parameters())
    assert all(p.grad is not None for p in model.layer4.parameters())
    after = model.state_dict()
    for k, v in stats.items():
        same = torch.equal(v, after[k])
        assert same == k.startswith(('stem.', 'layer1.', 'layer2.')), k


@pytest.mark.parametrize('with_hook', [False, True])
def test_plain_stem_pools_as_the_nchw_max_pool(with_hook, monkeypatch):
    """A frozen stem in training on an image batch (the detection configs'; no chain applies,
    nothing needs the stem's gradients) pools through ops.pooling.max_pool (channels_last):
    the outputs are bitwise those of the NCHW nn.MaxPool2d; with a hook on the pool, the pool
    itself runs and the hook sees the call."""
    import involution_mm.models.backbones.rednet as rednet
    routed = []
    monkeypatch.setattr(rednet, 'max_pool', lambda *args: routed.append(1) or max_pool(*args))
    torch.manual_seed(0)
    model = RedNet(26, frozen_stages=1, norm_eval=True, out_indices=(0, 3)).train()
    calls = []
    if with_hook:
        model.maxpool.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 3, 67, 61)
    out = model(x)
    assert len(routed) == (0 if with_hook else 1)
    expected = [model.maxpool(model.stem(x))]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        expected.append(layer(expected[-1]))
    assert torch.equal(out[0], expected[1]) and torch.equal(out[1], expected[4])
    assert len(calls) == (2 if with_hook else 0)


def test_norm_eval():
    model = RedNet(26, norm_eval=True)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert all(p.requires_grad for p in model.parameters())


def test_with_cp_same_gradients():
    torch.manual_seed(0)
    ref = RedNet(26, out_indices=(0, 1, 2, 3))
    ref.init_weights()
    for m in ref.modules():  # non-trivial residual branches
        if isinstance(m, Bottleneck):
            nn.init.uniform_(m.bn3.weight, 0.5, 1.0)
    cp = RedNet(26, out_indices=(0, 1, 2, 3), with_cp=True)
    cp.load_state_dict(ref.state_dict())
    assert all(b.with_cp for b in cp.modules() if isinstance(b, Bottleneck))
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (ref, cp):
        model.train()
        xx = x.clone().requires_grad_()
        outs = model(xx)
        sum((o * o).mean() for o in outs).backward()
        grads.append(([p.grad.clone() for p in model.parameters()], xx.grad.clone()))
    for g_ref, g_cp in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(g_cp, g_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)


def test_norm_cfg_reaches_every_norm_syncbn():
    model = RedNet(50, norm_cfg=dict(type='SyncBN', requires_grad=True))
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert isinstance(model.stem[2], nn.SyncBatchNorm)
    assert isinstance(model.stem[1].conv1.bn, nn.SyncBatchNorm)
    assert isinstance(model.layer3[2].conv2.conv1.bn, nn.SyncBatchNorm)
    # the same keys as with BN
    assert list(model.state_dict()) == list(RedNet(50).state_dict())
    gn = RedNet(26, norm_cfg=dict(type='GN', num_groups=4))
    assert not any(isinstance(m, _BatchNorm) for m in gn.modules())


def test_init_weights_zero_init_residual():
    model = RedNet(26)
    model.init_weights()
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(torch.all(b.bn3.weight == 0) for b in blocks)
    assert all(torch.all(b.bn2.weight == 1) for b in blocks)
    model = RedNet(26, zero_init_residual=False)
    model.init_weights()
    assert all(torch.all(m.bn3.weight == 1) for m in model.modules() if isinstance(m, Bottleneck))


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=34), r'valid depths are \[26, 38, 50, 101, 152\]'),
    (dict(depth=50, out_indices=(4, )), r'out_indices'),
    (dict(depth=50, strides=(1, 2, 2)), r'num_stages=4'),
    (dict(depth=50, stem_kernel_size=4), r'stem_kernel_size'),
    (dict(depth=50, frozen_stages=5), r'frozen_stages'),
    (dict(depth=50, style='tf'), r"'pytorch' or 'caffe'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RedNet(**kwargs)


def test_caffe_style_and_avg_down():
    model = RedNet(26, style='caffe', avg_down=True, out_indices=(0, 1, 2, 3)).eval()
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == 1
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


@pytest.mark.parametrize('kwargs', [dict(), dict(stem_kernel_size=7, avg_down=True)],
                         ids=['default', 'stem7_avg_down'])
def test_inference_and_deploy_forms_give_the_training_forms_outputs(kwargs):
    """In inference (eval mode, no grad) each 1x1 conv runs with its norm, residual add and
    ReLU as one op, each involution with the norm and ReLU after it as one op, and the stem in
    channels_last with each 3x3 conv, its norm and ReLU as one oneDNN op: no separate norm or
    ReLU is left. mmcv's fuse_conv_bn folds every BN that follows a conv (conv1/bn1, conv3/bn3,
    the downsample, the stem convs, the kernel branch's conv1) and leaves the BNs after an
    involution (bn2, stem.2) alone. Both compute what the layers one by one compute (eval
    mode with gradients wanted: the training code path)."""
    import copy

    from mmcv.cnn import fuse_conv_bn
    torch.manual_seed(0)
    model = RedNet(26, out_indices=(0, 1, 2, 3), **kwargs)
    model.init_weights()
    for m in model.modules():  # non-trivial affine parameters, statistics of real batches
        if isinstance(m, _BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.momentum = None
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        for _ in range(2):
            model(x + 0.1 * torch.randn_like(x))
    model.eval()
    reference = [out.detach() for out in model(x)]
    fused = fuse_conv_bn(copy.deepcopy(model))
    bns = [n for n, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    assert bns and all(n == 'stem.2' or n.endswith('.bn2') for n in bns)
    with torch.no_grad():
        for form in (model, fused):
            for a, b in zip(reference, form(x)):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
        for form in (model, fused):
            with torch.profiler.profile(record_shapes=True) as prof:
                form(x)
            names = {e.name for e in prof.events()}
            assert {'involution_mm::conv1x1_epilogue', 'involution_mm::involution_epilogue',
                    'mkldnn::_convolution_pointwise'} <= names
            assert not names & {'aten::bmm', 'aten::mm', 'aten::batch_norm', 'aten::relu',
                                'aten::relu_'}
            if form is fused:  # no residual or bias adds left: only per-channel vectors add
                adds = [e for e in prof.events() if e.name in ('aten::add', 'aten::add_')]
                assert all(len(shape) <= 1 for e in adds for shape in e.input_shapes)
