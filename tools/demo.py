#!/usr/bin/env python
"""The main job on embedded data: train and evaluate RedNet-50 models from scratch on CPU.

1. makes the synthetic COCO- and Cityscapes-format datasets (data/, seconds);
2. trains Mask R-CNN RedNet-50 (configs/demo/mask_rcnn_rednet50_fpn_synthetic.py) with
   tools/train.py, evaluates it with tools/test.py (prints bbox and segm AP), and writes a
   picture of predictions and the loss curve;
3. the same for Semantic FPN RedNet-50 (configs/demo/fpn_rednet50_synthetic.py, mIoU).

Outputs, under --work-dir (default work_dirs/demo):
  mask_rcnn/  fpn/                     the work dirs (logs, checkpoints, test outputs)
  mask_rcnn_predictions.png  mask_rcnn_loss.png
  fpn_predictions.png        fpn_loss.png
  summary.json                         metrics and wall times
It exits with status 1 if a model learned less than --min-bbox-ap / --min-segm-ap /
--min-miou (the check that training works).

Examples:
  python tools/demo.py                 # everything (`make demo`)
  python tools/demo.py --only det      # Mask R-CNN only
  python tools/demo.py --det-iters 50  # shorter (the thresholds may then fail)
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

DET_CONFIG = 'configs/demo/mask_rcnn_rednet50_fpn_synthetic.py'
SEG_CONFIG = 'configs/demo/fpn_rednet50_synthetic.py'

#: Cityscapes colours of the 19 train ids (mmseg's palette); 255 (ignored) is black
CITYSCAPES_PALETTE = [
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32]]
DET_COLOURS = [(0.95, 0.1, 0.1), (1.0, 0.6, 0.0), (0.1, 0.8, 0.2), (0.2, 0.4, 1.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train and evaluate the demo models on the '
                                'embedded synthetic data (CPU)')
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--data-dir', default='data')
    p.add_argument('--only', choices=['det', 'seg'], default=None)
    p.add_argument('--det-iters', type=int, default=None,
                   help='override max_iters of the Mask R-CNN demo config')
    p.add_argument('--seg-iters', type=int, default=None,
                   help='override max_iters of the Semantic FPN demo config')
    # about half of what the default schedules reach (bbox 0.52, segm 0.65, mIoU 80.3)
    p.add_argument('--min-bbox-ap', type=float, default=0.25)
    p.add_argument('--min-segm-ap', type=float, default=0.3)
    p.add_argument('--min-miou', type=float, default=60.0)
    p.add_argument('--no-check', action='store_true', help='do not fail on low metrics')
    return p.parse_args(argv)


def run(cmd, log_file, echo=('Iter(train)', 'RESULT', 'Error', 'error:', 'Traceback')):
    """Runs cmd, writing all output to log_file and echoing the progress lines."""
    env = dict(os.environ)
    # OpenMP threads that spin while waiting are 5-10x slower when the cores are shared
    # with other processes (measured on the 2-core development machine); passive waiting
    # costs little on an idle machine.
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    env['PYTHONUNBUFFERED'] = '1'
    os.makedirs(osp.dirname(osp.abspath(log_file)), exist_ok=True)
    print('$ ' + ' '.join(cmd), flush=True)
    t = time.time()
    lines = []
    with open(log_file, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if any(e in line for e in echo):
                text = line.rstrip()
                if 'Iter(' in text:  # drop the timestamp, keep the losses
                    text = text[text.index('Iter('):][:160]
                print('  ' + text, flush=True)
        rc = proc.wait()
    if rc != 0:
        print(''.join(lines[-40:]), file=sys.stderr)
        raise SystemExit(f'command failed ({rc}): {" ".join(cmd)} (log: {log_file})')
    return time.time() - t


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def train_and_test(name, config, work_root, iters, scope):
    work_dir = osp.join(work_root, name)
    train_cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    if iters is not None:
        # the schedule follows (its second scheduler ends at max_iters in both configs)
        train_cmd += ['--cfg-options', f'train_cfg.max_iters={iters}',
                      f'default_hooks.checkpoint.interval={iters}',
                      f'param_scheduler.1.end={iters}',
                      f'default_hooks.logger.interval={max(1, min(10, iters // 4))}']
        if scope == 'mmdet':
            train_cmd.append(
                f'param_scheduler.1.milestones=[{int(iters * 0.75)},{int(iters * 0.9)}]')
        else:  # the poly schedule starts after the warm-up (20 iterations, fewer if short)
            warmup = min(20, max(1, iters // 5))
            train_cmd += [f'param_scheduler.0.end={warmup}',
                          f'param_scheduler.1.begin={warmup}']
    t_train = run(train_cmd, osp.join(work_dir, 'train.log'))
    ckpt = last_checkpoint(work_dir)
    out = osp.join(work_dir, 'predictions.pkl' if scope == 'mmdet' else 'pred_png')
    metrics_json = osp.join(work_dir, 'metrics.json')
    test_cmd = [sys.executable, 'tools/test.py', config, ckpt,
                '--work-dir', osp.join(work_dir, 'test'), '--out', out,
                '--show-dir', osp.abspath(osp.join(work_dir, 'show')),
                '--metrics-json', metrics_json]
    t_test = run(test_cmd, osp.join(work_dir, 'test.log'))
    with open(metrics_json) as f:
        metrics = json.load(f)
    return dict(work_dir=work_dir, checkpoint=ckpt, predictions=out, metrics=metrics,
                train_s=round(t_train, 1), test_s=round(t_test, 1))


def det_picture(pred_file, out_file, classes, num=8, score_thr=0.5):
    """Grid of val images with the predicted masks, boxes, classes and scores."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    import pickle
    from pycocotools import mask as mask_utils
    with open(pred_file, 'rb') as f:
        results = pickle.load(f)
    results = sorted(results, key=lambda r: r['img_path'])[:num]
    cols = 4
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.4), dpi=100)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis('off')
    for ax, res in zip(np.atleast_1d(axes).ravel(), results):
        img = mmcv.imread(res['img_path'], channel_order='rgb').astype(np.float32) / 255
        pred = res['pred_instances']
        keep = [i for i, s in enumerate(pred['scores']) if float(s) >= score_thr]
        for i in keep:
            label = int(pred['labels'][i])
            colour = np.array(DET_COLOURS[label % len(DET_COLOURS)])
            masks = pred.get('masks')
            if masks is not None:
                m = masks[i]
                m = mask_utils.decode(m).astype(bool) if isinstance(m, dict) else \
                    np.asarray(m).astype(bool)
                img[m] = 0.45 * img[m] + 0.55 * colour
        ax.imshow(np.clip(img, 0, 1))
        for i in keep:
            label = int(pred['labels'][i])
            x0, y0, x1, y1 = [float(v) for v in pred['bboxes'][i]]
            colour = DET_COLOURS[label % len(DET_COLOURS)]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=colour, linewidth=1.5))
            ax.text(x0, y0 - 1, f'{classes[label]} {float(pred["scores"][i]):.2f}',
                    fontsize=7, color='white', va='bottom',
                    bbox=dict(facecolor=colour, alpha=0.8, pad=0.5, linewidth=0))
        ax.set_title(osp.basename(res['img_path']), fontsize=7)
    fig.suptitle(f'Mask R-CNN RedNet-50, synthetic COCO val (score >= {score_thr})',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def seg_picture(pred_dir, data_root, out_file, num=4):
    """Rows of image | ground truth | prediction, in the Cityscapes colours."""
    import glob
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    images = sorted(glob.glob(osp.join(data_root, 'leftImg8bit', 'val', '*',
                                       '*_leftImg8bit.png')))[:num]
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 1.6 * len(images) + 0.5), dpi=100)
    axes = np.atleast_2d(axes)
    for row, img_file in zip(axes, images):
        stem = osp.basename(img_file)[:-len('_leftImg8bit.png')]
        city = osp.basename(osp.dirname(img_file))
        gt = mmcv.imread(osp.join(data_root, 'gtFine', 'val', city,
                                  stem + '_gtFine_labelTrainIds.png'), flag='unchanged')
        pred_file = osp.join(pred_dir, stem + '_leftImg8bit.png')
        if not osp.exists(pred_file):
            pred_file = osp.join(pred_dir, osp.basename(img_file))
        pred = mmcv.imread(pred_file, flag='unchanged')
        for ax, im, title in zip(row, [mmcv.imread(img_file, channel_order='rgb'),
                                       palette[gt], palette[pred]],
                                 ['image', 'ground truth', 'prediction']):
            ax.imshow(im)
            ax.set_title(title, fontsize=8)
            ax.axis('off')
    fig.suptitle('Semantic FPN RedNet-50, synthetic Cityscapes val', fontsize=10)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def plot_curve(find_scalars, plot_losses, work_dir, out_file, title):
    scalars = find_scalars(work_dir)
    if scalars is None:
        print(f'  no training losses logged under {work_dir}: no loss curve', flush=True)
        return None
    plot_losses(scalars, out_file, title)
    return out_file


def main(argv=None):
    args = parse_args(argv)
    for name in ('det_iters', 'seg_iters'):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            raise SystemExit(f'--{name.replace("_", "-")} must be at least 2')
    os.chdir(ROOT)
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
    from plot_curves import find_scalars, plot_losses  # tools/analysis/plot_curves.py
    t0 = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    run([sys.executable, 'tools/dataset_converters/make_synthetic_data.py', '--out-dir',
         args.data_dir], osp.join(args.work_dir, 'make_data.log'), echo=('synthetic', ))
    summary = dict(machine=dict(cpus=os.cpu_count()), runs={})
    failures = []
    if args.only in (None, 'det'):
        print('== Mask R-CNN RedNet-50 on synthetic COCO ==', flush=True)
        res = train_and_test('mask_rcnn', DET_CONFIG, args.work_dir, args.det_iters, 'mmdet')
        from involution_mm.datasets import COCO_SYNTH_CLASSES
        pic = osp.join(args.work_dir, 'mask_rcnn_predictions.png')
        det_picture(res['predictions'], pic, COCO_SYNTH_CLASSES)
        curve = plot_curve(find_scalars, plot_losses, res['work_dir'],
                           osp.join(args.work_dir, 'mask_rcnn_loss.png'),
                           'Mask R-CNN RedNet-50 (synthetic)')
        res.update(predictions_png=pic, loss_png=curve)
        summary['runs']['mask_rcnn_rednet50'] = res
        m = res['metrics']
        if m.get('coco/bbox_mAP', 0) < args.min_bbox_ap:
            failures.append(f"bbox_mAP {m.get('coco/bbox_mAP')} < {args.min_bbox_ap}")
        if m.get('coco/segm_mAP', 0) < args.min_segm_ap:
            failures.append(f"segm_mAP {m.get('coco/segm_mAP')} < {args.min_segm_ap}")
    if args.only in (None, 'seg'):
        print('== Semantic FPN RedNet-50 on synthetic Cityscapes ==', flush=True)
        res = train_and_test('fpn', SEG_CONFIG, args.work_dir, args.seg_iters, 'mmseg')
        pic = osp.join(args.work_dir, 'fpn_predictions.png')
        seg_picture(res['predictions'], osp.join(args.data_dir, 'synthetic_cityscapes'), pic)
        curve = plot_curve(find_scalars, plot_losses, res['work_dir'],
                           osp.join(args.work_dir, 'fpn_loss.png'),
                           'Semantic FPN RedNet-50 (synthetic)')
        res.update(predictions_png=pic, loss_png=curve)
        summary['runs']['fpn_rednet50'] = res
        if res['metrics'].get('mIoU', 0) < args.min_miou:
            failures.append(f"mIoU {res['metrics'].get('mIoU')} < {args.min_miou}")
    summary['total_s'] = round(time.time() - t0, 1)
    with open(osp.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)

    print('\n================ demo summary (synthetic data, from scratch, CPU) ================')
    for name, res in summary['runs'].items():
        m = res['metrics']
        if 'coco/bbox_mAP' in m:
            score = f"bbox_mAP {m['coco/bbox_mAP']:.3f}  segm_mAP {m['coco/segm_mAP']:.3f}  " \
                    f"(AP50 {m['coco/bbox_mAP_50']:.3f} / {m['coco/segm_mAP_50']:.3f})"
        else:
            score = f"mIoU {m['mIoU']:.2f}  aAcc {m.get('aAcc', float('nan')):.2f}"
        print(f'{name:22s} {score}   train {res["train_s"]:.0f} s, test {res["test_s"]:.0f} s')
        print(f'{"":22s} {res["predictions_png"]}  {res["loss_png"]}')
    print(f'total wall time {summary["total_s"]:.0f} s; summary: '
          f'{osp.join(args.work_dir, "summary.json")}')
    if failures and not args.no_check:
        print('demo check FAILED (the models learned less than expected): '
              + '; '.join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
