# UPerNet with a RedNet-50 backbone, Cityscapes 512x1024, 80k iterations.
# Official counterpart: seg/configs/involution/upernet_red50_512x1024_80k_cityscapes.py
# (mIoU 80.6). Everything but the backbone is the stock mmseg config (SyncBN, auxiliary FCN
# head, 4 GPUs x 2 images).
_base_ = 'mmseg::upernet/upernet_r50_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
# ImageNet-pretrained RedNet-50 (see fpn_rednet50_cityscapes.py for how to make it).
pretrained = 'checkpoints/rednet50.pth'
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='RedNet',
        depth=50,
        stem_kernel_size=7,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
