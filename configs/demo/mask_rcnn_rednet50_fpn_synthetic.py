# Demo: Mask R-CNN RedNet-50 (configs/mask_rcnn_rednet50_fpn_coco.py) trained from scratch
# on the synthetic COCO-format data (tools/dataset_converters/make_synthetic_data.py) in a
# few minutes on 2 CPU cores. Changed from the COCO config, and why:
#   data: data/synthetic_coco, its 4 categories, 128x128 images (no multi-scale);
#   from scratch (no pretrained weights can be had here): no init_cfg, nothing frozen, BN
#     statistics learned (norm_eval=False);
#   CPU cost: fewer sampled RoIs for the R-CNN heads (the mask head's cost grows with them)
#     and fewer proposals;
#   schedule: iteration-based, short, with a short warm-up.
_base_ = '../mask_rcnn_rednet50_fpn_coco.py'

data_root = 'data/synthetic_coco/'
metainfo = dict(classes=('stop sign', 'sports ball', 'kite', 'tv'))
num_classes = 4
img_scale = (128, 128)
max_iters = 150
batch_size = 4

model = dict(
    backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None),
    roi_head=dict(
        bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
# no validation while training: tools/test.py evaluates the final checkpoint
val_dataloader = None
val_evaluator = None
val_cfg = None

# iteration-based schedule
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.75), int(max_iters * 0.9)], gamma=0.1)
]
optim_wrapper = dict(
    optimizer=dict(lr=0.02), clip_grad=dict(max_norm=10, norm_type=2))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2))
log_processor = dict(by_epoch=False)

# the same numbers on every run (data order, initial weights)
randomness = dict(seed=0)
