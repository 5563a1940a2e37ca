#!/usr/bin/env python
"""Make the small synthetic datasets this project trains and tests on without downloads.

Writes, deterministically for a seed and in seconds:
  data/synthetic_coco/        COCO layout (annotations/instances_{train,val}2017.json,
                              train2017/, val2017/): shapes of 4 real COCO categories
  data/synthetic_cityscapes/  Cityscapes layout (leftImg8bit/, gtFine/ with
                              *_gtFine_labelTrainIds.png and *_gtFine_labelIds.png)
The stock mmdet CocoDataset/CocoMetric and mmseg CityscapesDataset/IoUMetric read them;
see involution_mm/datasets/synthetic.py for what the scenes contain.

Examples:
  python tools/dataset_converters/make_synthetic_data.py            # both, default sizes
  python tools/dataset_converters/make_synthetic_data.py --only coco --coco-train 32
"""
import argparse
import json
import os.path as osp
import shutil
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from involution_mm.datasets.synthetic import (GENERATOR_VERSION,  # noqa: E402
                                              make_synthetic_cityscapes, make_synthetic_coco)

STAMP = 'synthetic_data.json'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Make synthetic COCO- and Cityscapes-format data')
    p.add_argument('--out-dir', default='data', help='parent folder (default: data)')
    p.add_argument('--only', choices=['coco', 'cityscapes'], default=None,
                   help='make only one of the two datasets')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--coco-train', type=int, default=256, help='COCO train images')
    p.add_argument('--coco-val', type=int, default=48, help='COCO val images')
    p.add_argument('--coco-size', type=int, default=128, help='COCO image side (pixels)')
    p.add_argument('--cityscapes-train', type=int, default=128)
    p.add_argument('--cityscapes-val', type=int, default=24)
    p.add_argument('--cityscapes-size', type=int, nargs=2, default=[256, 128],
                   metavar=('W', 'H'), help='Cityscapes image size (default 256 128)')
    p.add_argument('--force', action='store_true',
                   help='rewrite even if the folder holds the same dataset already')
    return p.parse_args(argv)


def make(root, params, fn, force):
    """Runs fn(root) unless root already holds the dataset of these params (its stamp
    file says so); a folder of other params is removed first."""
    params = dict(params, generator_version=GENERATOR_VERSION)
    stamp = osp.join(root, STAMP)
    if not force and osp.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                print(f'{root}: up to date, kept (--force to rewrite)')
                return
    if osp.exists(root):
        shutil.rmtree(root)
    t = time.time()
    summary = fn(root)
    with open(stamp, 'w') as f:
        json.dump(params, f, indent=1)
    print(f'{root}: {summary} in {time.time() - t:.1f}s')


def main(argv=None):
    args = parse_args(argv)
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
    return 0


if __name__ == '__main__':
    sys.exit(main())
