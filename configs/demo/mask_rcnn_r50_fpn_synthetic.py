# Demo comparison (tools/demo.py --compare): the stock Mask R-CNN R-50 on the demo's data,
# input size and schedule. It is configs/demo/mask_rcnn_rednet50_fpn_synthetic.py with the
# backbone of mmdet's mask-rcnn_r50_fpn_1x_coco put back, trained from scratch like the
# RedNet one (no pretrained weights, nothing frozen, BN statistics learned).
_base_ = './mask_rcnn_rednet50_fpn_synthetic.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None))
