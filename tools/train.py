#!/usr/bin/env python
"""Train a model of an mmdet, mmseg or mmpretrain config (mmdet/mmseg tools conventions).

The config's ``default_scope`` decides which package builds it; ``involution_mm`` is
imported first (RedNet and the involution necks/heads registered, torch.load able to read
mmengine checkpoints on torch >= 2.6). The published (GPU) configs run unchanged on a
CPU-only machine: SyncBN becomes BN and NCCL becomes gloo there. Every checkpoint the run
would read is checked before anything is built.

Examples:
  python tools/train.py configs/demo/mask_rcnn_rednet50_fpn_synthetic.py
  python tools/train.py CONFIG --work-dir work_dirs/x --cfg-options train_cfg.max_iters=10
  python tools/train.py CONFIG --resume                 # latest checkpoint of the work dir
  python tools/train.py CONFIG --resume work_dirs/x/iter_100.pth
  tools/dist_train.sh CONFIG 8                          # torchrun, --launcher pytorch
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import involution_mm  # noqa: E402,F401  (registries, torch.load safe globals)
from involution_mm.utils.checkpoint import CheckpointError  # noqa: E402
from involution_mm.utils.runtime import (UnsupportedSetupError, build_runner,  # noqa: E402
                                         finish_distributed, prepare_run)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (needs CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or, without a path, from the latest '
        'checkpoint in the work directory')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy '
        'format will be merged into config file. If the value to be overwritten is a list, '
        'it should be like key="[a,b]" or key=a,b. It also allows nested list/tuple values, '
        'e.g. key="[(a,b),(c,d)]". Note that the quotation marks are necessary and that no '
        'white space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0); torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise UnsupportedSetupError(
                'cannot find "auto_scale_lr.base_batch_size" in the config')

    # resume: an explicit checkpoint > the latest one in the work dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = build_cfg(args)
        # mmengine initialises the weights (reading pretrained files) before it resumes
        notes = prepare_run(cfg, args.launcher, training=True, amp=args.amp)
    except (CheckpointError, UnsupportedSetupError) as err:
        print(f'tools/train.py: error: {err}', file=sys.stderr)
        return 2

    runner = build_runner(cfg, notes)
    runner.train()
    finish_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
