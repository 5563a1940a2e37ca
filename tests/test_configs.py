"""Every config of configs/ loads with mmengine's Config.fromfile and builds on CPU.

Built as the tools build them: ``import involution_mm`` (custom_imports), the config's
default scope, no pretrained weights (init_cfg=None; nothing can be downloaded or read
here), SyncBN as BN (no CUDA). The mmpretrain classification configs load everywhere but
build only where mmpretrain.models imports (it needs torchvision).
"""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.utils import import_modules_from_strings

from involution_mm.ops import Involution
from involution_mm.utils.runtime import (CheckpointError, adapt_cfg_to_machine, drop_pretrained,
                                         check_checkpoint_files, pretrained_checkpoints,
                                         replace_sync_bn)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                                         recursive=True))
DET = [c for c in CONFIGS if osp.basename(c).startswith(('mask_rcnn', 'faster_rcnn',
                                                            'retinanet'))]
SEG = [c for c in CONFIGS if osp.basename(c).startswith(('fpn_', 'upernet_'))]
CLS = [c for c in CONFIGS if osp.basename(c).startswith('rednet')]
#: the ImageNet configs -> their published size (M parameters: d-li14/involution README)
PUBLISHED_PARAMS_M = {f'configs/rednet{d}_64xb32_in1k.py': m for d, m in (
    (26, 9.23), (38, 12.39), (50, 15.54), (101, 25.65), (152, 33.99))}


def load(path):
    return Config.fromfile(osp.join(ROOT, path))


def test_the_configs_the_issue_names_exist():
    names = {osp.basename(c) for c in CONFIGS}
    wanted = {f'{m}_rednet50_{v}_coco.py' for m in ('mask_rcnn', 'faster_rcnn')
              for v in ('fpn', 'neck_fpn', 'neck_fpn_head')}
    wanted |= {'retinanet_rednet50_fpn_coco.py', 'retinanet_rednet50_neck_fpn_coco.py',
               'fpn_rednet50_cityscapes.py', 'fpn_rednet50_neck_cityscapes.py',
               'upernet_rednet50_cityscapes.py'}
    wanted |= {f'rednet{d}_64xb32_in1k.py' for d in (26, 38, 50, 101, 152)}
    wanted |= {'mask_rcnn_rednet50_fpn_synthetic.py', 'fpn_rednet50_synthetic.py',
               'rednet26_synthetic_cls.py'}
    assert wanted <= names, sorted(wanted - names)


#: the demo's ResNet-50 comparisons -> the stock config whose backbone they put back
R50_DEMOS = {'configs/demo/mask_rcnn_r50_fpn_synthetic.py':
             'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
             'configs/demo/fpn_r50_synthetic.py':
             'mmseg::sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py'}


@pytest.mark.parametrize('path', sorted(R50_DEMOS))
def test_r50_demo_configs_differ_from_the_rednet_demo_only_in_the_stock_backbone(path):
    import importlib
    package, stock_path = R50_DEMOS[path].split('::')
    stock = Config.fromfile(osp.join(osp.dirname(importlib.import_module(package).__file__),
                                     '.mim', 'configs', stock_path))
    cfg = load(path)
    rednet = load(path.replace('_r50_', '_rednet50_'))
    # from scratch as the RedNet demo: no pretrained weights, nothing frozen, BN learned
    ours = dict(cfg.model.backbone)
    assert ours.pop('init_cfg') is None and ours.pop('norm_eval') is False
    assert ours.pop('frozen_stages', -1) == -1
    theirs = {k: v for k, v in stock.model.backbone.items()
              if k not in ('init_cfg', 'norm_eval', 'frozen_stages')}
    assert ours == theirs
    cfg.model.pop('backbone')
    rednet.model.pop('backbone')
    assert cfg.model == rednet.model
    assert cfg.train_dataloader == rednet.train_dataloader
    assert cfg.param_scheduler == rednet.param_scheduler and cfg.randomness == rednet.randomness


def _stock_root(path):
    """The first _base_ at the root of the config's inheritance chain."""
    with open(osp.join(ROOT, path)) as f:
        text = f.read()
    line = next(ln for ln in text.splitlines() if ln.startswith('_base_'))
    base = line.split('=', 1)[1].strip().strip('\'"')
    if '::' in base:
        return base
    return _stock_root(osp.normpath(osp.join(osp.dirname(path), base)))


@pytest.mark.parametrize('path', CONFIGS)
def test_config_loads_inherits_stock_and_names_no_url(path):
    cfg = load(path)
    root = _stock_root(path)
    assert root.split('::')[0] in ('mmdet', 'mmseg', 'mmpretrain'), root
    assert cfg.default_scope == root.split('::')[0]
    assert 'involution_mm' in cfg.custom_imports['imports']
    if path in R50_DEMOS:
        assert cfg.model.backbone.type in ('ResNet', 'ResNetV1c')
    else:
        assert cfg.model.backbone.type == 'RedNet'
    for key, ckpt in pretrained_checkpoints(cfg):
        assert '://' not in ckpt, (key, ckpt)
    assert not cfg.get('load_from')


def _prepare(cfg):
    replace_sync_bn(cfg._cfg_dict)
    cfg.model.backbone.init_cfg = None
    if 'pretrained' in cfg.model:
        cfg.model.pretrained = None
    return cfg


def build(cfg):
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return ROOT_MODELS.build(cfg.model)


@pytest.mark.parametrize('path', DET + SEG)
def test_config_builds_on_cpu(path):
    model = build(_prepare(load(path)))
    name = osp.basename(path)
    if path in R50_DEMOS:
        assert type(model.backbone).__name__ == load(path).model.backbone.type
        return
    assert type(model.backbone).__name__ == 'RedNet'
    assert model.backbone.depth == 50 and model.backbone.stem_kernel_size == 7
    neck = getattr(model, 'neck', None)
    if '_neck' in name:
        assert type(neck).__name__ == 'InvolutionFPN'
        assert isinstance(neck.fpn_convs[0], Involution)
    elif neck is not None:
        assert type(neck).__name__ == 'FPN'
    if name.endswith('_neck_fpn_head_coco.py'):
        assert isinstance(model.rpn_head.rpn_conv, Involution)
        if name.startswith('mask_rcnn'):
            assert type(model.roi_head.mask_head).__name__ == 'InvolutionFCNMaskHead'
    if path in SEG:
        assert type(model.decode_head).__name__ in ('FPNHead', 'UPerHead')
        assert model.decode_head.num_classes == 19


def test_official_schedules():
    def sched(path):
        cfg = load(path)
        warmup = cfg.param_scheduler[0]
        clip = cfg.optim_wrapper.get('clip_grad')
        return warmup['end'], clip['max_norm'] if clip else None, cfg.optim_wrapper.optimizer.lr
    for m in ('mask_rcnn', 'faster_rcnn'):
        assert sched(f'configs/{m}_rednet50_fpn_coco.py') == (500, None, 0.02)
        assert sched(f'configs/{m}_rednet50_neck_fpn_coco.py') == (2000, None, 0.02)
        assert sched(f'configs/{m}_rednet50_neck_fpn_head_coco.py') == (2000, 5, 0.02)
    assert sched('configs/retinanet_rednet50_fpn_coco.py') == (2000, None, 0.01)
    assert sched('configs/retinanet_rednet50_neck_fpn_coco.py') == (2000, 40, 0.01)
    for path in SEG:
        cfg = load(path)
        if 'synthetic' in path:
            continue
        assert cfg.train_cfg.max_iters == 80000
        assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
        assert cfg.train_pipeline[3]['crop_size'] == (512, 1024)
    assert set(PUBLISHED_PARAMS_M) <= set(CLS)
    for path in PUBLISHED_PARAMS_M:
        cfg = load(path)
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.nesterov, opt.weight_decay) == ('SGD', 0.8, True, 1e-4)
        assert cfg.train_cfg.max_epochs == 130
        assert cfg.train_dataloader.batch_size == 32 and cfg.auto_scale_lr.base_batch_size == 2048
        assert cfg.model.head.loss.type == 'LabelSmoothLoss'
        assert cfg.model.head.loss.label_smooth_val == 0.1
        assert cfg.param_scheduler[1]['end'] == 130
        assert cfg.model.backbone.stem_kernel_size == 3


@pytest.mark.parametrize('path', CLS)
def test_classification_config_builds_where_mmpretrain_models_imports(path):
    cfg = load(path)
    depth = int(osp.basename(path)[len('rednet'):].split('_')[0])
    assert cfg.model.backbone.depth == depth
    try:
        import mmpretrain.models  # noqa: F401
    except Exception as err:
        pytest.skip(f'mmpretrain.models does not import here ({type(err).__name__}: {err}); '
                    'it needs torchvision, which has no build for this CPU torch')
    model = build(_prepare(cfg))
    assert type(model.backbone).__name__ == 'RedNet'
    if path in PUBLISHED_PARAMS_M:  # the whole classifier: backbone and 1000-class fc
        assert model.head.fc.out_features == 1000
        params_m = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params_m - PUBLISHED_PARAMS_M[path]) <= 0.01, (path, params_m)


def test_cpu_adaptation_replaces_syncbn_and_nccl():
    cfg = load('configs/upernet_rednet50_cityscapes.py')
    notes = adapt_cfg_to_machine(cfg, launcher='pytorch')
    import torch
    if torch.cuda.is_available():
        assert notes == []
        return
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.auxiliary_head.norm_cfg.type == 'BN'
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_missing_pretrained_file_is_named_with_how_to_convert(tmp_path):
    cfg = load('configs/mask_rcnn_rednet50_fpn_coco.py')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'nope' / 'rednet50.pth')
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_files(cfg)
    msg = str(info.value)
    assert 'rednet50.pth' in msg and 'model.backbone.init_cfg.checkpoint' in msg
    assert 'tools/convert_official_checkpoint.py' in msg
    # a test run does not read the pretrained file, only its own checkpoint
    check_checkpoint_files(cfg, training=False)
    cfg.load_from = 'https://example.com/x.pth'
    with pytest.raises(CheckpointError, match='is a URL'):
        check_checkpoint_files(cfg, training=False)


def test_get_flops_rednet50_classifier(capsys):
    import runpy
    import sys
    tool = osp.join(ROOT, 'tools', 'analysis', 'get_flops.py')
    argv = sys.argv
    sys.argv = [tool, osp.join(ROOT, 'configs', 'rednet50_64xb32_in1k.py')]
    try:
        runpy.run_path(tool, run_name='__main__')
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert 'params: 15.54 M' in out  # the published RedNet-50 size
    flops = float(out.split('FLOPs (multiply-adds): ')[1].split(' G')[0])
    assert abs(flops - 2.71) / 2.71 < 0.03, out  # published: 2.71 GFLOPs
    inv = float(out.split('of which involution op: ')[1].split(' G')[0])
    assert 0.05 < inv < 0.1, out  # sum of B*C*Ho*Wo*K*K over the 17 involutions


def test_drop_pretrained_clears_every_pretraining_file_and_nothing_else():
    node = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='a.pth'),
                              pretrained='b.pth'),
                neck=[dict(init_cfg=[dict(type='Kaiming'), dict(type='Pretrained')])],
                head=dict(init_cfg=dict(type='Normal', std=0.01), pretrained=True))
    drop_pretrained(node)
    assert node == dict(backbone=dict(init_cfg=None, pretrained=None),
                        neck=[dict(init_cfg=None)],
                        head=dict(init_cfg=dict(type='Normal', std=0.01), pretrained=True))
