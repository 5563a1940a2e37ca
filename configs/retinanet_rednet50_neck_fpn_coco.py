# RetinaNet, RedNet-50 + involution FPN (the extra stride-2 levels stay convs), 1x.
# Official counterpart: retinanet_red50_neck_fpn_1x_coco.py (box AP 38.2).
# Changes from retinanet_rednet50_fpn_coco.py: the neck and gradient clipping at max_norm 40
# (official schedule_1x_warmup_grad_clip).
_base_ = './retinanet_rednet50_fpn_coco.py'

model = dict(neck=dict(type='InvolutionFPN'))

optim_wrapper = dict(clip_grad=dict(max_norm=40, norm_type=2))
