# Faster R-CNN with a RedNet-50 backbone and the conv FPN, 1x schedule, COCO.
# Official counterpart: det/configs/involution/faster_rcnn_red50_fpn_1x_coco.py (box AP 39.5).
# Everything but the backbone is the stock mmdet config (500 warm-up iterations, no clipping).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
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
