#!/usr/bin/env python
"""Convert an official RedNet checkpoint (github.com/d-li14/involution) for this project.

Reads a classification (mmcls 0.x), detection (mmdet 2.x) or segmentation (mmseg 0.x)
checkpoint with torch's weights-only loader, infers the RedNet depth and stem kernel (3 in
the classification models, 7 in the detection/segmentation ones), checks every key and shape
against this project's modules (backbone, involution FPN, classifier; the whole model with
--config) and writes an mmengine checkpoint. It prints exactly which keys were mapped,
missing, unexpected or of another shape, and exits with status 1 (writing nothing unless
--allow-partial) if any are missing, unexpected or mismatched.

Examples:
  python tools/convert_official_checkpoint.py rednet50-1c2ff5a8.pth work_dirs/rednet50.pth
  # -> init_cfg=dict(type='Pretrained', checkpoint='work_dirs/rednet50.pth',
  #                  prefix='backbone.')
  python tools/convert_official_checkpoint.py rednet50-1c2ff5a8.pth rednet50_backbone.pth \
      --backbone-only        # -> init_cfg=dict(type='Pretrained', checkpoint=...)
  python tools/convert_official_checkpoint.py mask_rcnn_red50_neck_fpn_head.pth out.pth \
      --config configs/mask-rcnn_red50_neck-fpn-head_1x_coco.py   # check every key
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from involution_mm.utils.convert import (ConversionError, convert_checkpoint,  # noqa: E402
                                         format_report)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official RedNet checkpoint to an mmengine checkpoint of '
        'involution_mm, validating every key and shape.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', nargs='?', default=None,
                        help='output checkpoint; omit to only check and report')
    parser.add_argument('--config', default=None,
                        help='an mm config whose model the checkpoint must match exactly '
                        '(checks necks/heads that the converter cannot infer)')
    parser.add_argument('--backbone-only', action='store_true',
                        help="keep only the backbone, without the 'backbone.' prefix")
    parser.add_argument('--allow-partial', action='store_true',
                        help='write the output even if keys are missing/unexpected/mismatched')
    parser.add_argument('--trusted', action='store_true',
                        help='if the file holds Python objects outside the weights-only '
                        'allow-list, unpickle it anyway (runs code from the file)')
    parser.add_argument('--report', default=None, help='also write the full report as JSON')
    parser.add_argument('--verbose', action='store_true', help='list every mapped key')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        report = convert_checkpoint(args.src, args.dst, config=args.config,
                                    backbone_only=args.backbone_only, trusted=args.trusted,
                                    allow_partial=args.allow_partial)
    except (ConversionError, FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(format_report(report, verbose=args.verbose))
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(report, f, indent=1, default=str)
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
