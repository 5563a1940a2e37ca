"""Stock mmdet detectors and mmseg segmentors with RedNet-50 and the involution neck/heads.

Each model comes from the stock config in the installed package (``mmdet::...``,
``mmseg::...``) with the parts replaced as a user's config would do it (short type names
after ``custom_imports``, or ``involution_mm.*`` names), is built through the registries
under the package's default scope, and runs loss + backward + predict on 2 small images on
CPU. Nothing is downloaded: no init_cfg points at a checkpoint, and BN replaces SyncBN.
"""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.utils import import_modules_from_strings

from involution_mm.ops import Involution

CUSTOM_IMPORTS = dict(imports=['involution_mm'], allow_failed_imports=False)
BN = dict(type='BN', requires_grad=True)


def rednet50(type_name='RedNet', **kwargs):
    cfg = dict(type=type_name, depth=50, stem_kernel_size=7, out_indices=(0, 1, 2, 3),
               frozen_stages=1, norm_cfg=BN, norm_eval=True, style='pytorch', init_cfg=None)
    cfg.update(kwargs)
    return cfg


def build_like_a_user(cfg):
    """What mmengine's Runner does: custom imports, default scope, MODELS.build."""
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = ROOT_MODELS.build(cfg.model)
    model.init_weights()
    return model


def run_loss_backward_predict(model, packed):
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, False)
        preds = model(**data, mode='predict')
    return log_vars, preds


def assert_has_grad(module):
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------- mmdet

mmdet_ok = True
try:
    import mmdet.models  # noqa: F401
    from mmdet.testing import demo_mm_inputs
except Exception as err:  # pragma: no cover
    mmdet_ok = False
    mmdet_reason = f'mmdet does not import: {err}'
needs_mmdet = pytest.mark.skipif(not mmdet_ok, reason='mmdet does not import')


def user_config(tmp_path, base, model):
    """A config file as a user writes it: the stock config as _base_, parts replaced."""
    path = tmp_path / 'user_config.py'
    path.write_text(f'_base_ = {base!r}\n'
                    f'custom_imports = {CUSTOM_IMPORTS!r}\n'
                    f'model = {model!r}\n')
    return Config.fromfile(str(path))


def det_config(tmp_path, path, neck=True, rpn_head=False, mask_head=False,
               backbone_type='RedNet'):
    model = dict(backbone=dict(_delete_=True, **rednet50(backbone_type)))
    # small enough for CPU: fewer sampled RoIs; at test time keep 10 boxes whatever their
    # score (an untrained model scores below the stock threshold), so the heads all run
    if 'rcnn' in path:
        model['train_cfg'] = dict(rcnn=dict(sampler=dict(num=64)))
        model['test_cfg'] = dict(rpn=dict(nms_pre=200, max_per_img=100),
                                 rcnn=dict(score_thr=0.0, max_per_img=10))
    else:
        model['test_cfg'] = dict(score_thr=0.0, max_per_img=10)
    if neck:
        model['neck'] = dict(type='InvolutionFPN')
    if rpn_head:
        model['rpn_head'] = dict(type='InvolutionRPNHead')
    if mask_head:
        model['roi_head'] = dict(mask_head=dict(type='InvolutionFCNMaskHead'))
    return user_config(tmp_path, f'mmdet::{path}', model)


def det_inputs(with_mask=False):
    torch.manual_seed(0)
    return demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128), (3, 96, 112)],
                          num_items=[3, 2], num_classes=80, with_mask=with_mask)


@needs_mmdet
def test_faster_rcnn_neck_fpn_head(tmp_path):
    cfg = det_config(tmp_path, 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', rpn_head=True)
    model = build_like_a_user(cfg)
    assert type(model.backbone).__name__ == 'RedNet'
    assert type(model.neck).__name__ == 'InvolutionFPN'
    assert isinstance(model.rpn_head.rpn_conv, Involution)
    log_vars, preds = run_loss_backward_predict(model, det_inputs())
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'} <= set(log_vars)
    for m in (model.backbone.layer4, model.neck.fpn_convs[0], model.rpn_head.rpn_conv):
        assert_has_grad(m)
    assert all(p.grad is None for p in model.backbone.layer1.parameters())  # frozen_stages=1
    assert len(preds) == 2 and all(hasattr(p, 'pred_instances') for p in preds)
    assert preds[0].pred_instances.bboxes.shape == (10, 4)


@needs_mmdet
def test_mask_rcnn_neck_fpn_head(tmp_path):
    cfg = det_config(tmp_path, 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', rpn_head=True,
                     mask_head=True)
    model = build_like_a_user(cfg)
    assert type(model.roi_head.mask_head).__name__ == 'InvolutionFCNMaskHead'
    log_vars, preds = run_loss_backward_predict(model, det_inputs(with_mask=True))
    assert {'loss_rpn_cls', 'loss_cls', 'loss_mask'} <= set(log_vars)
    for m in (model.backbone.layer3, model.neck.fpn_convs[3], model.rpn_head.rpn_conv,
              model.roi_head.mask_head.convs):
        assert_has_grad(m)
    assert len(preds) == 2
    for pred, shape in zip(preds, [(128, 128), (96, 112)]):
        assert len(pred.pred_instances) == 10
        assert tuple(pred.pred_instances.masks.shape) == (10, *shape)


@needs_mmdet
def test_retinanet_neck_fpn_scoped_names(tmp_path):
    cfg = det_config(tmp_path, 'retinanet/retinanet_r50_fpn_1x_coco.py', neck=False,
                     backbone_type='involution_mm.RedNet')
    cfg.model.neck.type = 'involution_mm.InvolutionFPN'
    assert cfg.model.neck.add_extra_convs == 'on_input' and cfg.model.neck.start_level == 1
    model = build_like_a_user(cfg)
    neck = model.neck
    assert neck.add_extra_convs == 'on_input' and len(neck.fpn_convs) == 5
    assert all(isinstance(m, Involution) for m in neck.fpn_convs[:3])
    assert not isinstance(neck.fpn_convs[3], Involution)  # extra levels stay convs
    log_vars, preds = run_loss_backward_predict(model, det_inputs())
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)
    assert_has_grad(model.neck.fpn_convs)
    assert len(preds) == 2 and preds[1].pred_instances.bboxes.shape == (10, 4)


# ------------------------------------------------------------------------------- mmseg

mmseg_ok = True
try:
    import mmseg.models  # noqa: F401
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
except Exception:  # pragma: no cover
    mmseg_ok = False
needs_mmseg = pytest.mark.skipif(not mmseg_ok, reason='mmseg does not import')


def seg_config(tmp_path, path, neck=False, aux=True):
    model = dict(pretrained=None,
                 backbone=dict(_delete_=True, **rednet50(frozen_stages=-1, norm_eval=False)),
                 data_preprocessor=dict(size=(128, 128)),
                 decode_head=dict(norm_cfg=BN))
    if aux:
        model['auxiliary_head'] = dict(norm_cfg=BN)
    if neck:
        model['neck'] = dict(type='InvolutionFPN')
    return user_config(tmp_path, f'mmseg::{path}', model)


def seg_inputs(num_classes=19):
    torch.manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128),
                                             pad_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, 128, 128)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@needs_mmseg
def test_semantic_fpn_involution_neck(tmp_path):
    cfg = seg_config(tmp_path, 'sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py', neck=True,
                     aux=False)
    model = build_like_a_user(cfg)
    assert type(model.neck).__name__ == 'InvolutionFPN'
    log_vars, preds = run_loss_backward_predict(model, seg_inputs())
    assert 'decode.loss_ce' in log_vars
    assert_has_grad(model.backbone.layer1)
    assert_has_grad(model.neck.fpn_convs)
    assert len(preds) == 2 and preds[0].pred_sem_seg.data.shape == (1, 128, 128)


@needs_mmseg
def test_upernet_rednet50(tmp_path):
    cfg = seg_config(tmp_path, 'upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py')
    model = build_like_a_user(cfg)
    assert type(model.backbone).__name__ == 'RedNet'
    log_vars, preds = run_loss_backward_predict(model, seg_inputs())
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars)
    assert_has_grad(model.backbone.layer4)
    assert len(preds) == 2 and preds[1].pred_sem_seg.data.shape == (1, 128, 128)


@needs_mmseg
def test_mmseg_output_stride_8_backbone_builds(tmp_path):
    cfg = seg_config(tmp_path, 'upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py')
    cfg.model.backbone.update(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    model = build_like_a_user(cfg).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 8, 8]


# -------------------------------------------------------------------------- mmpretrain

def test_mmpretrain_image_classifier():
    try:
        import mmpretrain.models  # noqa: F401
    except Exception as err:
        pytest.skip(f'mmpretrain.models does not import here ({type(err).__name__}: {err}); '
                    'it needs torchvision, which has no build for this CPU torch')
    cfg = Config(dict(
        default_scope='mmpretrain', custom_imports=CUSTOM_IMPORTS,
        model=dict(type='ImageClassifier',
                   backbone=dict(type='RedNet', depth=26, init_cfg=None),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=10, in_channels=2048,
                             loss=dict(type='CrossEntropyLoss')))))
    model = build_like_a_user(cfg)
    out = model(torch.randn(2, 3, 64, 64), mode='tensor')
    assert out.shape == (2, 10)
