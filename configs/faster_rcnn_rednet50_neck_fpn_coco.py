# Faster R-CNN, RedNet-50 + involution FPN, 1x.
# Official counterpart: faster_rcnn_red50_neck_fpn_1x_coco.py (box AP 40.2).
# Changes from faster_rcnn_rednet50_fpn_coco.py: the neck and 2000 warm-up iterations.
_base_ = './faster_rcnn_rednet50_fpn_coco.py'

model = dict(neck=dict(type='InvolutionFPN'))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
