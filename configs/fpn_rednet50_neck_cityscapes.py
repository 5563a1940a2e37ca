# Semantic FPN, RedNet-50 + involution FPN (7x7 involutions as its output convs),
# Cityscapes 512x1024, 80k iterations.
# Official counterpart: fpn_red50_neck_512x1024_80k_cityscapes.py (mIoU 79.1).
# Change from fpn_rednet50_cityscapes.py: the neck. The norm inside the involutions' kernel
# branch follows the model's norm (SyncBN; the official code hard-coded BN there).
_base_ = './fpn_rednet50_cityscapes.py'

model = dict(
    neck=dict(
        type='InvolutionFPN',
        involution_cfg=dict(norm_cfg=dict(type='SyncBN', requires_grad=True))))
