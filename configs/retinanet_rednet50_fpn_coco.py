# RetinaNet with a RedNet-50 backbone and the conv FPN, 1x schedule, COCO.
# Official counterpart: det/configs/involution/retinanet_red50_fpn_1x_coco.py (box AP 38.2):
# stock RetinaNet (lr 0.01) with 2000 warm-up iterations.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)

# ImageNet-pretrained RedNet-50 (see mask_rcnn_rednet50_fpn_coco.py for how to make it).
pretrained = 'checkpoints/rednet50.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='RedNet',
        depth=50,
        stem_kernel_size=7,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
