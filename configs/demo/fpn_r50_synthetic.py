# Demo comparison (tools/demo.py --compare): the stock Semantic FPN R-50 on the demo's
# data, crops and schedule. It is configs/demo/fpn_rednet50_synthetic.py with the backbone
# of mmseg's fpn_r50_4xb2-80k_cityscapes-512x1024 put back (ResNetV1c, deep stem), trained
# from scratch like the RedNet one (no pretrained weights).
_base_ = './fpn_rednet50_synthetic.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1c',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True,
        init_cfg=None))
