# Mask R-CNN, RedNet-50 + involution FPN + involution RPN head and mask head, 1x.
# Official counterpart: mask_rcnn_red50_neck_fpn_head_1x_coco.py (box AP 39.6, mask AP 35.1).
# Changes from mask_rcnn_rednet50_neck_fpn_coco.py: the RPN conv and the 4 mask-head convs
# are 7x7 involutions, and gradients are clipped at max_norm 5 (official).
_base_ = './mask_rcnn_rednet50_neck_fpn_coco.py'

model = dict(
    rpn_head=dict(type='InvolutionRPNHead'),
    roi_head=dict(mask_head=dict(type='InvolutionFCNMaskHead')))

optim_wrapper = dict(clip_grad=dict(max_norm=5, norm_type=2))
