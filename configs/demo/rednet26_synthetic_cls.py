# Demo: RedNet-26 (configs/rednet26_64xb32_in1k.py) trained from scratch on the synthetic
# ImageNet-format data (tools/dataset_converters/make_synthetic_data.py) in a few minutes on
# 2 CPU cores. Changed from the ImageNet config, and why:
#   data: data/synthetic_imagenet (the ImageNet layout, meta/{train,val}.txt), its 4 classes,
#     32x32 images, horizontal flips only (a random crop can cut off the shape that is the
#     class); top-1 only (top-5 of 4 classes is always 1);
#   from scratch (no pretrained weights can be had here): no init_cfg;
#   optimizer: AdamW (SGD at the official learning rate per image diverged from scratch in
#     the first tens of iterations here); label smoothing as published;
#   schedule: iteration-based and short, a short warm-up, cosine to zero.
_base_ = '../rednet26_64xb32_in1k.py'

data_root = 'data/synthetic_imagenet/'
metainfo = dict(classes=('cross', 'disc', 'square', 'triangle'))
num_classes = 4
max_iters = 240
batch_size = 32

data_preprocessor = dict(num_classes=num_classes)
model = dict(
    backbone=dict(init_cfg=None),
    head=dict(num_classes=num_classes, topk=(1, ),
              loss=dict(num_classes=num_classes)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    dataset=dict(data_root=data_root, split='train', metainfo=metainfo,
                 pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=64,
    num_workers=1,
    dataset=dict(data_root=data_root, split='val', metainfo=metainfo,
                 pipeline=test_pipeline))
test_evaluator = dict(type='Accuracy', topk=(1, ))
# no validation while training: tools/test.py evaluates the final checkpoint
val_dataloader = None
val_evaluator = None
val_cfg = None

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=0, by_epoch=False, begin=20, end=max_iters)
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2))
log_processor = dict(by_epoch=False)

# the same numbers on every run (data order, initial weights)
randomness = dict(seed=0)
