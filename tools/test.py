#!/usr/bin/env python
"""Test (and evaluate) a checkpoint of an mmdet, mmseg or mmpretrain config.

Mirrors the test tools of mmdet/mmseg: ``--out`` dumps the predictions (mmdet/mmpretrain: a
.pkl file; mmseg: a folder of prediction PNGs), ``--show-dir`` saves painted predictions,
``--cfg-options`` and ``--launcher`` as usual. At the end it prints every metric and one
line ``RESULT bbox_mAP=... segm_mAP=...`` / ``RESULT mIoU=...`` / ``RESULT top1=...``;
``--metrics-json`` also writes the metrics to a file.

Examples:
  python tools/test.py CONFIG work_dirs/x/iter_600.pth --show-dir vis
  python tools/test.py CONFIG CKPT --out results.pkl --metrics-json metrics.json
  tools/dist_test.sh CONFIG CKPT 8
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import involution_mm  # noqa: E402,F401  (registries, torch.load safe globals)
from involution_mm.utils.checkpoint import CheckpointError  # noqa: E402
from involution_mm.utils.runtime import (UnsupportedSetupError, build_runner,  # noqa: E402
                                         config_scope,
                                         finish_distributed, format_metrics, prepare_run)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir',
                        help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions: a .pkl file (mmdet, mmpretrain) or a '
                        'folder of prediction PNGs (mmseg)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='directory where painted images will be saved (mmdet: under '
                        'work_dir/timestamp/ unless absolute)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--interval', type=int, default=1,
                        help='with --show/--show-dir, paint every n-th test batch (mmseg and '
                        'mmpretrain; mmdet paints all)')
    parser.add_argument('--metrics-json', help='also write the metrics to this JSON file')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy '
        'format will be merged into config file, e.g. test_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation '
                        '(the config\'s tta_model and tta_pipeline)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _plain(value):
    """A JSON-able value: numpy/torch scalars become Python numbers."""
    if hasattr(value, 'item') and getattr(value, 'ndim', 0) == 0:
        value = value.item()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def trigger_visualization_hook(cfg, args, scope):
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise UnsupportedSetupError('--show/--show-dir need a visualization hook in '
                                    'default_hooks')
    hook = hooks['visualization']
    if scope == 'mmpretrain':
        hook['enable'] = True
        hook['show'] = args.show
        hook['wait_time'] = args.wait_time
        hook['out_dir'] = args.show_dir
        hook['interval'] = args.interval
        return
    hook['draw'] = True
    if scope == 'mmseg':
        hook['interval'] = args.interval
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            hook['test_out_dir'] = args.show_dir


def build_cfg(args):
    from mmengine.config import Config, ConfigDict
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    scope = config_scope(cfg)
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args, scope)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise UnsupportedSetupError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    if args.out is not None and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = build_cfg(args)
        scope = config_scope(cfg)
        if args.out is not None and scope != 'mmseg' and \
                not args.out.endswith(('.pkl', '.pickle')):
            raise UnsupportedSetupError('--out must be a .pkl file for this config')
        # the test loads the whole model from the checkpoint: pretrained files are not read
        notes = prepare_run(cfg, args.launcher, training=False)
    except (CheckpointError, UnsupportedSetupError) as err:
        print(f'tools/test.py: error: {err}', file=sys.stderr)
        return 2

    runner = build_runner(cfg, notes)
    if args.out is not None and scope != 'mmseg':
        if scope == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        else:
            from mmengine.evaluator import DumpResults
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    if runner.rank == 0:
        print(format_metrics(metrics, title=f'{osp.basename(args.config)} | '
                             f'{osp.basename(args.checkpoint)}'), flush=True)
        if args.metrics_json:
            os.makedirs(osp.dirname(osp.abspath(args.metrics_json)), exist_ok=True)
            with open(args.metrics_json, 'w') as f:
                json.dump({k: _plain(v) for k, v in metrics.items()}, f, indent=1)
    finish_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
