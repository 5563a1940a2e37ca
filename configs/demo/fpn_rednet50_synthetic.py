# Demo: Semantic FPN RedNet-50 (configs/fpn_rednet50_cityscapes.py) trained from scratch on
# the synthetic Cityscapes-format data (tools/dataset_converters/make_synthetic_data.py) in
# a few minutes on 2 CPU cores. Changed from the Cityscapes config, and why:
#   data: data/synthetic_cityscapes (same layout, the 19 Cityscapes train ids), 256x128
#     images, 128x256 crops (the stock 512x1024 crops of 2048x1024 images, scaled down);
#   from scratch (no pretrained weights can be had here): no init_cfg;
#   schedule: a short poly schedule, 4 images per iteration (one process).
# SyncBN stays as published: tools/train.py turns it into BN without CUDA.
_base_ = '../fpn_rednet50_cityscapes.py'

data_root = 'data/synthetic_cityscapes/'
crop_size = (128, 256)
img_scale = (256, 128)
max_iters = 120
batch_size = 4

model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
# no validation while training: tools/test.py evaluates the final checkpoint
val_dataloader = None
val_evaluator = None
val_cfg = None

train_cfg = dict(max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=20, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(optimizer=dict(lr=0.02))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2))

# the same numbers on every run (data order, initial weights)
randomness = dict(seed=0)
