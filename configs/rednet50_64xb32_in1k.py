# RedNet-50 on ImageNet-1k with the official recipe (github d-li14/involution,
# cls/configs/rednet/rednet50_b32x64_warmup_coslr_imagenet.py; top-1 78.35, 15.54 M params,
# 2.71 GFLOPs): 64 GPUs x 32 images = batch 2048, SGD lr 0.8 nesterov, wd 1e-4, 5 warm-up
# epochs from 0.25 x lr, cosine to 0 over 130 epochs, label smoothing 0.1.
# The stock mmpretrain config below is the same recipe for ResNet-50 except batch split,
# epochs and loss. Needs mmpretrain.models, which needs torchvision (not on the CPU-only
# development machine of this project: there the config loads but does not build).
_base_ = 'mmpretrain::resnet/resnet50_32xb64-warmup-coslr_in1k.py'
custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RedNet',
        depth=50,
        stem_kernel_size=3,
        num_stages=4,
        out_indices=(3, ),
        style='pytorch'),
    head=dict(
        loss=dict(
            _delete_=True,
            type='LabelSmoothLoss',
            label_smooth_val=0.1,
            num_classes=1000,
            loss_weight=1.0)))

train_dataloader = dict(batch_size=32)
val_dataloader = dict(batch_size=32)
test_dataloader = dict(batch_size=32)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.25, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=125, eta_min=0, by_epoch=True, begin=5, end=130,
         convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=130, val_interval=1)
auto_scale_lr = dict(base_batch_size=2048)
