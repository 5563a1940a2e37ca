# Mask R-CNN with a RedNet-50 backbone and the conv FPN, 1x schedule, COCO.
# Official counterpart: det/configs/involution/mask_rcnn_red50_fpn_1x_coco.py
# (box AP 39.9, mask AP 35.7). Everything but the backbone is the stock mmdet config,
# including its schedule (500 warm-up iterations, no gradient clipping).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)

# ImageNet-pretrained RedNet-50: the official classification checkpoint converted with
#   python tools/convert_official_checkpoint.py rednet50-1c2ff5a8.pth checkpoints/rednet50.pth
# tools/train.py stops at start, saying how to get it, if the file is missing. Its stem
# involution is 3x3 while the detection RedNet's is 7x7 (as in the official code): those two
# tensors are not loaded (mmengine logs the size mismatch) and stay randomly initialised.
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
