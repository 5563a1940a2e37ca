# Mask R-CNN, RedNet-50 + involution FPN (its 3x3 output convs are 7x7 involutions), 1x.
# Official counterpart: mask_rcnn_red50_neck_fpn_1x_coco.py (box AP 40.8, mask AP 36.4).
# Changes from mask_rcnn_rednet50_fpn_coco.py: the neck, and the official warm-up of the
# involution variants (2000 iterations instead of 500).
_base_ = './mask_rcnn_rednet50_fpn_coco.py'

model = dict(neck=dict(type='InvolutionFPN'))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
