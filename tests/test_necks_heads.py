"""InvolutionFPN and the involution RPN / FCN mask heads."""
import pytest
import torch
import torch.nn as nn

from involution_mm.models import InvolutionFPN, RedNet
from involution_mm.ops import Involution

IN_CHANNELS = [256, 512, 1024, 2048]


def _feats(batch=1, size=32):
    return tuple(torch.randn(batch, c, size >> i, size >> i) for i, c in enumerate(IN_CHANNELS))


def test_fpn_structure_keys_and_shapes():
    neck = InvolutionFPN(IN_CHANNELS, 256, 5).eval()
    assert len(neck.fpn_convs) == 4
    assert all(isinstance(m, Involution) and m.kernel_size == 7 and m.groups == 16
               for m in neck.fpn_convs)
    keys = set(neck.state_dict())
    assert 'fpn_convs.0.conv1.conv.weight' in keys and 'fpn_convs.3.conv2.conv.bias' in keys
    assert 'lateral_convs.2.conv.weight' in keys
    assert neck.state_dict()['fpn_convs.0.conv2.conv.weight'].shape == (49 * 16, 64, 1, 1)
    with torch.no_grad():
        outs = neck(_feats())
    assert [tuple(o.shape) for o in outs] == [(1, 256, 32 >> i, 32 >> i) for i in range(4)] + [
        (1, 256, 2, 2)]


@pytest.mark.parametrize('mode', [True, 'on_input', 'on_lateral', 'on_output'])
def test_fpn_extra_convs_are_ordinary_convs(mode):
    neck = InvolutionFPN(IN_CHANNELS, 256, 5, start_level=1, add_extra_convs=mode).eval()
    assert len(neck.lateral_convs) == 3 and len(neck.fpn_convs) == 5
    assert all(isinstance(m, Involution) for m in neck.fpn_convs[:3])
    extra = neck.fpn_convs[3]
    assert isinstance(extra.conv, nn.Conv2d) and extra.conv.stride == (2, 2)
    assert extra.conv.in_channels == (2048 if mode in (True, 'on_input') else 256)
    with torch.no_grad():
        outs = neck(_feats())
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1]


def test_fpn_same_interface_as_mmdet_fpn():
    from mmdet.models.necks import FPN
    cfg = dict(in_channels=IN_CHANNELS, out_channels=256, num_outs=5, start_level=1,
               add_extra_convs='on_input')
    ours, stock = InvolutionFPN(**cfg), FPN(**cfg)
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    # laterals and the extra stride-2 convs have mmdet's names and shapes
    same = [k for k in stock_sd if k.startswith(('lateral_convs', 'fpn_convs.3.', 'fpn_convs.4.'))]
    assert same and all(ours_sd[k].shape == stock_sd[k].shape for k in same)
    # the level convs are involutions
    assert all(k in ours_sd for k in ('fpn_convs.0.conv1.conv.weight',
                                      'fpn_convs.2.conv2.conv.bias'))
    feats = _feats()
    with torch.no_grad():
        assert [o.shape for o in ours.eval()(feats)] == [o.shape for o in stock.eval()(feats)]


def test_fpn_norm_cfg_reaches_involution_branch():
    neck = InvolutionFPN(IN_CHANNELS, 256, 4, norm_cfg=dict(type='SyncBN'))
    assert all(isinstance(m.conv1.bn, nn.SyncBatchNorm) for m in neck.fpn_convs)
    neck = InvolutionFPN(IN_CHANNELS, 256, 4,
                         involution_cfg=dict(norm_cfg=dict(type='SyncBN'), kernel_size=5))
    assert all(m.kernel_size == 5 and isinstance(m.conv1.bn, nn.SyncBatchNorm)
               for m in neck.fpn_convs)
    with pytest.raises(ValueError, match='unknown keys'):
        InvolutionFPN(IN_CHANNELS, 256, 4, involution_cfg=dict(kernel=5))


def test_fpn_mismatched_channels_errors():
    backbone = RedNet(26, out_indices=(0, 1, 2, 3)).eval()
    neck = InvolutionFPN([64, 128, 256, 512], 256, 5)
    match = r'set in_channels=\[256, 512, 1024, 2048\]'
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        neck(backbone(torch.randn(1, 3, 64, 64)))
    neck = InvolutionFPN(IN_CHANNELS, 256, 5)
    with pytest.raises(ValueError, match='expected 4 input levels'):
        neck(_feats()[:3])
    with pytest.raises(ValueError, match='not divisible by group_channels'):
        InvolutionFPN(IN_CHANNELS, 200, 5)
    with pytest.raises(ValueError, match='add_extra_convs'):
        InvolutionFPN(IN_CHANNELS, 256, 5, add_extra_convs='on_top')


def test_rpn_head():
    pytest.importorskip('mmdet.models')
    from mmdet.models.dense_heads import RPNHead

    from involution_mm.models.heads import InvolutionRPNHead
    anchor = dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                  strides=[4, 8, 16, 32, 64])
    head = InvolutionRPNHead(256, anchor_generator=anchor)
    assert isinstance(head, RPNHead) and isinstance(head.rpn_conv, Involution)
    assert {k.split('.')[0] for k in head.state_dict()} == {'rpn_conv', 'rpn_cls', 'rpn_reg'}
    assert 'rpn_conv.conv2.conv.weight' in head.state_dict()
    head.init_weights()
    cls, reg = head.forward_single(torch.randn(2, 256, 16, 16))
    assert cls.shape == (2, 3, 16, 16) and reg.shape == (2, 12, 16, 16)
    two = InvolutionRPNHead(256, num_convs=2, anchor_generator=anchor)
    assert isinstance(two.rpn_conv, nn.Sequential) and len(two.rpn_conv) == 3
    with pytest.raises(ValueError, match=r'feat_channels \(128\) must equal in_channels'):
        InvolutionRPNHead(256, feat_channels=128, anchor_generator=anchor)


def test_fcn_mask_head():
    pytest.importorskip('mmdet.models')
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    from involution_mm.models.heads import InvolutionFCNMaskHead
    head = InvolutionFCNMaskHead(num_convs=4, in_channels=256, conv_out_channels=256,
                                 num_classes=80)
    stock = FCNMaskHead(num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80)
    assert isinstance(head, FCNMaskHead) and len(head.convs) == 4
    for conv in head.convs:
        assert isinstance(conv[0], Involution) and isinstance(conv[1], nn.ReLU)
    sd = head.state_dict()
    assert 'convs.3.0.conv1.conv.weight' in sd and 'convs.0.0.conv2.conv.bias' in sd
    for k in ('upsample.weight', 'conv_logits.weight', 'conv_logits.bias'):
        assert sd[k].shape == stock.state_dict()[k].shape
    head.init_weights()
    out = head(torch.randn(3, 256, 14, 14))
    assert out.shape == (3, 80, 28, 28)
    with pytest.raises(ValueError, match=r'conv_out_channels \(128\) must equal in_channels'):
        InvolutionFCNMaskHead(in_channels=256, conv_out_channels=128)
