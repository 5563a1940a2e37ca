#!/usr/bin/env python
"""Parameters and FLOPs of the model of a config (mmdet, mmseg or mmpretrain).

FLOPs are counted as multiply-adds (one fused multiply-add = 1 FLOP, the convention of
fvcore, mmengine.analysis and the published RedNet numbers) by tracing the model with
mmengine's FlopAnalyzer, which knows convolutions, linear layers, matmuls and norms; this
tool adds the involution op (``involution_mm::involution``): B*C*Ho*Wo*K*K multiply-adds
(its kernel-generating 1x1 convs are ordinary convs and counted as such).

The model is built with no pretrained weights (nothing is read), SyncBN as BN, in eval
mode, and run in 'tensor' mode on one random input: detectors through backbone, neck, RPN
(test-time proposals) and RoI heads; segmentors through the decode head; classifiers to
the logits. Where mmpretrain.models does not import (no torchvision), a classification
config with a RedNet backbone is counted as backbone + global average pooling + fc (what
its ImageClassifier computes), with a note.

Examples:
  python tools/analysis/get_flops.py configs/rednet50_64xb32_in1k.py            # 224x224
  python tools/analysis/get_flops.py configs/mask_rcnn_rednet50_fpn_coco.py --shape 800 1333
  python tools/analysis/get_flops.py configs/fpn_rednet50_cityscapes.py --shape 1024 2048
"""
import argparse
import os.path as osp
import sys
from collections import Counter

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import involution_mm  # noqa: E402,F401
from involution_mm.utils.runtime import (config_scope, drop_pretrained,  # noqa: E402
                                         replace_sync_bn)

DEFAULT_SHAPES = {'mmdet': (800, 1333), 'mmseg': (1024, 2048), 'mmpretrain': (224, 224)}
INVOLUTION_OP = 'involution_mm::involution'


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Params and FLOPs (multiply-adds) of a config')
    p.add_argument('config')
    p.add_argument('--shape', type=int, nargs='+', default=None,
                   help='input H [W] (default: 224 224 classification, 800 1333 detection, '
                   '1024 2048 segmentation)')
    p.add_argument('--show-table', action='store_true', help='per-module table')
    p.add_argument('--max-depth', type=int, default=3, help='depth of the table')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of the config, xxx=yyy')
    return p.parse_args(argv)


def involution_flop_jit(inputs, outputs):
    """Multiply-adds of one involution: each output element sums K*K products."""
    from mmengine.analysis.jit_handles import get_shape
    out = get_shape(outputs[0])
    k = inputs[2].toIValue()
    if k is None:  # not a constant: the kernel's size is in the weight's shape
        w = get_shape(inputs[1])
        k = w[2] if len(w) == 6 else int(round((w[1] / 1) ** 0.5))
    n = 1
    for d in out:
        n *= d
    return n * k * k


class _ClassifierStandIn(nn.Module):
    """backbone -> global average pooling -> fc: what mmpretrain's ImageClassifier with a
    GlobalAveragePooling neck and a LinearClsHead computes in 'tensor' mode."""

    def __init__(self, backbone, in_channels, num_classes):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Module()
        self.head.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        feats = self.backbone(x)
        x = feats[-1] if isinstance(feats, (tuple, list)) else feats
        return self.head.fc(self.neck(x).flatten(1))


def build_model(cfg):
    """(model, note) for FLOP counting."""
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as ROOT_MODELS
    scope = config_scope(cfg)
    if scope == 'mmpretrain':
        try:
            import mmpretrain.models  # noqa: F401
        except Exception as err:
            model_cfg = cfg.model
            head = model_cfg.get('head', {})
            neck = model_cfg.get('neck', {}) or {}
            if model_cfg.get('type') != 'ImageClassifier' or \
                    head.get('type') not in ('LinearClsHead', ) or \
                    neck.get('type') != 'GlobalAveragePooling':
                raise SystemExit(f'mmpretrain.models does not import here ({err}) and this '
                                 'model has no stand-in; run where torchvision installs')
            from involution_mm.registry import MODELS
            backbone_cfg = dict(model_cfg.backbone)
            backbone_cfg['type'] = backbone_cfg['type'].split('.')[-1]
            backbone = MODELS.build(backbone_cfg)
            note = (f'mmpretrain.models does not import here ({type(err).__name__}); '
                    'counted as backbone + global average pooling + fc (ImageClassifier '
                    'with GlobalAveragePooling and LinearClsHead computes exactly that)')
            return _ClassifierStandIn(backbone, head['in_channels'], head['num_classes']), note
    with DefaultScope.overwrite_default_scope(scope):
        model = ROOT_MODELS.build(cfg.model)
    return model, None


def make_inputs(model, scope, shape):
    """(callable, inputs tuple) for the tracer."""
    h, w = shape
    if scope not in ('mmdet', 'mmseg') or not hasattr(model, 'data_preprocessor'):
        return model, (torch.rand(1, 3, h, w),)
    from functools import partial
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=meta)
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    forward = model.forward
    model.forward = partial(forward, data_samples=data['data_samples'], mode='tensor')
    return model, (data['inputs'],)


def count(model, inputs):
    from mmengine.analysis import FlopAnalyzer, parameter_count
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(INVOLUTION_OP, involution_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer, parameter_count(model)['']


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = config_scope(cfg)
    replace_sync_bn(cfg._cfg_dict)
    drop_pretrained(cfg._cfg_dict['model'])
    shape = args.shape or DEFAULT_SHAPES.get(scope, (224, 224))
    if len(shape) == 1:
        shape = (shape[0], shape[0])
    shape = tuple(shape[:2])

    model, note = build_model(cfg)
    model.eval()
    model, inputs = make_inputs(model, scope, shape)
    with torch.no_grad():
        analyzer, params = count(model, inputs)
        total = analyzer.total()
        by_op = analyzer.by_operator()
        by_module = analyzer.by_module()
    split = '=' * 60
    print(split)
    print(f'config: {args.config}')
    if note:
        print(f'note: {note}')
    print(f'input shape: (1, 3, {inputs[0].shape[-2]}, {inputs[0].shape[-1]})'
          + ('' if tuple(inputs[0].shape[-2:]) == shape else f' (padded from {shape})'))
    print(f'params: {params / 1e6:.2f} M')
    print(f'FLOPs (multiply-adds): {total / 1e9:.3f} G')
    # the analyzer names operators without their namespace
    inv = by_op.get(INVOLUTION_OP, 0) + by_op.get(INVOLUTION_OP.split('::')[-1], 0)
    print(f'  of which involution op: {inv / 1e9:.3f} G')
    ops = Counter({k: v for k, v in by_op.items() if v})
    print('  by operator: ' + ', '.join(f'{k.split("::")[-1]} {v / 1e9:.3f} G'
                                        for k, v in ops.most_common()))
    tops = [(m, by_module[m]) for m in by_module if m and '.' not in m and by_module[m]]
    if tops:
        print('  by module: ' + ', '.join(f'{m} {v / 1e9:.3f} G' for m, v in tops))
    print(split)
    if args.show_table:
        from mmengine.analysis import complexity_stats_table
        print(complexity_stats_table(analyzer, max_depth=args.max_depth,
                                     show_param_shapes=False))
    return dict(params=params, flops=total, involution_flops=inv)


if __name__ == '__main__':
    main()
