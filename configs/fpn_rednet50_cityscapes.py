# Semantic FPN with a RedNet-50 backbone and the conv FPN, Cityscapes 512x1024, 80k iterations.
# Official counterpart: seg/configs/involution/fpn_red50_512x1024_80k_cityscapes.py
# (mIoU 78.0). Everything but the backbone is the stock mmseg config (SyncBN, 4 GPUs x 2
# images, SGD lr 0.01 poly). On a machine without CUDA, tools/train.py and tools/test.py
# use BN instead of SyncBN and gloo instead of NCCL.
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
# ImageNet-pretrained RedNet-50: the official classification checkpoint converted with
#   python tools/convert_official_checkpoint.py rednet50-1c2ff5a8.pth checkpoints/rednet50.pth
# (its 3x3 stem involution does not fit the 7x7 one of the dense-prediction RedNet, as in the
# official code: those two tensors stay randomly initialised).
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
