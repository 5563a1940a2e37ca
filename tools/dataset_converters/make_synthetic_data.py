#!/usr/bin/env python
"""Make the small synthetic datasets this project trains and tests on without downloads.

Writes, deterministically for a seed and in seconds:
  data/synthetic_coco/        COCO layout (annotations/instances_{train,val}2017.json,
                              train2017/, val2017/): shapes of 4 real COCO categories
  data/synthetic_cityscapes/  Cityscapes layout (leftImg8bit/, gtFine/ with
                              *_gtFine_labelTrainIds.png and *_gtFine_labelIds.png)
  data/synthetic_imagenet/    ImageNet layout ({train,val}/<class>/*.png,
                              meta/{train,val}.txt): one shape per image, 4 classes
The stock mmdet CocoDataset/CocoMetric, mmseg CityscapesDataset/IoUMetric and mmpretrain
ImageNet (or CustomDataset)/Accuracy read them;
see involution_mm/datasets/synthetic.py for what the scenes contain.

Examples:
  python tools/dataset_converters/make_synthetic_data.py            # both, default sizes
  python tools/dataset_converters/make_synthetic_data.py --only coco --coco-train 32
  python tools/dataset_converters/make_synthetic_data.py --only imagenet
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from involution_mm.datasets.synthetic import (GENERATOR_VERSION,  # noqa: E402
                                              make_synthetic_cityscapes, make_synthetic_coco,
                                              make_synthetic_imagenet)

STAMP = 'synthetic_data.json'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Make synthetic COCO-, Cityscapes- and '
                                'ImageNet-format data')
    p.add_argument('--out-dir', default='data', help='parent folder (default: data)')
    p.add_argument('--only', choices=['coco', 'cityscapes', 'imagenet'], default=None,
                   help='make only one of the datasets')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--coco-train', type=int, default=256, help='COCO train images')
    p.add_argument('--coco-val', type=int, default=48, help='COCO val images')
    p.add_argument('--coco-size', type=int, default=128, help='COCO image side (pixels)')
    p.add_argument('--cityscapes-train', type=int, default=128)
    p.add_argument('--cityscapes-val', type=int, default=24)
    p.add_argument('--cityscapes-size', type=int, nargs=2, default=[256, 128],
                   metavar=('W', 'H'), help='Cityscapes image size (default 256 128)')
    p.add_argument('--imagenet-train', type=int, default=1024,
                   help='ImageNet train images (a multiple of --imagenet-classes)')
    p.add_argument('--imagenet-val', type=int, default=256)
    p.add_argument('--imagenet-size', type=int, default=32, help='ImageNet image side (pixels)')
    p.add_argument('--imagenet-classes', type=int, default=4,
                   help='ImageNet classes (2-4: cross, disc, square, triangle)')
    p.add_argument('--force', action='store_true',
                   help='rewrite even if the folder holds the same dataset already')
    return p.parse_args(argv)


def make(root, params, fn, force):
    """Runs fn(root) unless root already holds the dataset of these params (its stamp
    file says so); a folder of other params is replaced once the new one is complete (a
    failing fn leaves it as it was)."""
    params = dict(params, generator_version=GENERATOR_VERSION)
    stamp = osp.join(root, STAMP)
    if not force and osp.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                print(f'{root}: up to date, kept (--force to rewrite)')
                return
    partial = root.rstrip('/') + '.partial'
    if osp.exists(partial):
        shutil.rmtree(partial)
    t = time.time()
    try:
        summary = fn(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with open(osp.join(partial, STAMP), 'w') as f:
        json.dump(params, f, indent=1)
    if osp.exists(root):
        shutil.rmtree(root)
    os.rename(partial, root)
    print(f'{root}: {summary} in {time.time() - t:.1f}s')


def main(argv=None):
    args = parse_args(argv)
    try:
        make_all(args)
    except ValueError as err:  # arguments the generators refuse (e.g. a class count)
        print(f'make_synthetic_data.py: error: {err}', file=sys.stderr)
        return 2
    return 0


def make_all(args):
    if args.only in (None, 'coco'):
        params = dict(train=args.coco_train, val=args.coco_val, size=args.coco_size,
                      seed=args.seed)
        make(osp.join(args.out_dir, 'synthetic_coco'), params,
             lambda root: make_synthetic_coco(root, args.coco_train, args.coco_val,
                                              args.coco_size, seed=args.seed), args.force)
    if args.only in (None, 'cityscapes'):
        w, h = args.cityscapes_size
        params = dict(train=args.cityscapes_train, val=args.cityscapes_val, size=[w, h],
                      seed=args.seed)
        make(osp.join(args.out_dir, 'synthetic_cityscapes'), params,
             lambda root: make_synthetic_cityscapes(root, args.cityscapes_train,
                                                    args.cityscapes_val, w, h,
                                                    seed=args.seed), args.force)
    if args.only in (None, 'imagenet'):
        params = dict(train=args.imagenet_train, val=args.imagenet_val, size=args.imagenet_size,
                      classes=args.imagenet_classes, seed=args.seed)
        make(osp.join(args.out_dir, 'synthetic_imagenet'), params,
             lambda root: make_synthetic_imagenet(root, args.imagenet_train, args.imagenet_val,
                                                  args.imagenet_size, args.imagenet_classes,
                                                  seed=args.seed), args.force)


if __name__ == '__main__':
    sys.exit(main())
