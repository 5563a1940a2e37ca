# Faster R-CNN, RedNet-50 + involution FPN + involution RPN head, 1x.
# Official counterpart: faster_rcnn_red50_neck_fpn_head_1x_coco.py (box AP 39.2).
# Changes from faster_rcnn_rednet50_neck_fpn_coco.py: the RPN conv is a 7x7 involution and
# gradients are clipped at max_norm 5 (official).
_base_ = './faster_rcnn_rednet50_neck_fpn_coco.py'

model = dict(rpn_head=dict(type='InvolutionRPNHead'))

optim_wrapper = dict(clip_grad=dict(max_norm=5, norm_type=2))
