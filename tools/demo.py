#!/usr/bin/env python
"""The main job on embedded data: train and evaluate RedNet-50 models from scratch on CPU.

1. makes the synthetic COCO-, Cityscapes- and ImageNet-format datasets (data/, seconds);
2. trains Mask R-CNN RedNet-50 (configs/demo/mask_rcnn_rednet50_fpn_synthetic.py) with
   tools/train.py, evaluates it with tools/test.py (prints bbox and segm AP), and writes a
   picture of predictions and the loss curve;
3. the same for Semantic FPN RedNet-50 (configs/demo/fpn_rednet50_synthetic.py, mIoU);
4. the same for the RedNet-26 classifier (configs/demo/rednet26_synthetic_cls.py, top-1)
   on the synthetic ImageNet-format data, where mmpretrain.models imports (it needs
   torchvision); elsewhere this step is skipped and says why.

With --compare it also trains the stock ResNet-50 models (configs/demo/*_r50_*) on the same
data, schedule and seed and writes the RedNet-vs-ResNet table and plot (tools/demo_compare.py).

Outputs, under --work-dir (default work_dirs/demo):
  mask_rcnn/  fpn/                     the work dirs (logs, checkpoints, test outputs)
  mask_rcnn_predictions.png  mask_rcnn_loss.png   (image | ground truth | prediction)
  fpn_predictions.png        fpn_loss.png
  rednet26_cls_predictions.png rednet26_cls_loss.png   (val images: truth -> prediction)
  mask_rcnn_r50*, fpn_r50*, compare.{md,json,png}  with --compare
  summary.json                         metrics, wall times, peak memory, the machine
It exits with status 1 if a model learned less than --min-bbox-ap / --min-segm-ap /
--min-miou / --min-top1 (the check that training works).

Examples:
  python tools/demo.py                 # everything (`make demo`)
  python tools/demo.py --only det      # Mask R-CNN only (--only cls: the classifier)
  python tools/demo.py --det-iters 50  # shorter (the thresholds may then fail)
  python tools/demo.py --compare       # RedNet-50 against ResNet-50 (`make compare`)
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
CLS_CONFIG = 'configs/demo/rednet26_synthetic_cls.py'
DET_R50_CONFIG = 'configs/demo/mask_rcnn_r50_fpn_synthetic.py'
SEG_R50_CONFIG = 'configs/demo/fpn_r50_synthetic.py'

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
    p.add_argument('--only', choices=['det', 'seg', 'cls'], default=None)
    p.add_argument('--det-iters', type=int, default=None,
                   help='override max_iters of the Mask R-CNN demo config')
    p.add_argument('--seg-iters', type=int, default=None,
                   help='override max_iters of the Semantic FPN demo config')
    p.add_argument('--cls-iters', type=int, default=None,
                   help='override max_iters of the RedNet-26 classification demo config')
    # about half of what the default schedules reach (bbox 0.52, segm 0.65, mIoU 80.3)
    p.add_argument('--min-bbox-ap', type=float, default=0.25)
    p.add_argument('--min-segm-ap', type=float, default=0.3)
    p.add_argument('--min-miou', type=float, default=60.0)
    p.add_argument('--min-top1', type=float, default=50.0, help='percent; chance is 25')
    p.add_argument('--no-check', action='store_true', help='do not fail on low metrics')
    p.add_argument('--compare', action='store_true',
                   help='also train the stock ResNet-50 models on the same data, schedule '
                   'and seed, and write a RedNet-vs-ResNet table (compare.md, compare.json) '
                   'and plot (compare.png)')
    return p.parse_args(argv)


def run(cmd, log_file, echo=('Iter(train)', 'RESULT', 'Error', 'error:', 'Traceback')):
    """Runs cmd, writing all output to log_file and echoing the progress lines; returns
    (wall seconds, peak resident memory of the process in bytes)."""
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
        # wait4 gives this child's own peak RSS (getrusage would mix all children)
        _, status, usage = os.wait4(proc.pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
    if rc != 0:
        print(''.join(lines[-40:]), file=sys.stderr)
        raise SystemExit(f'command failed ({rc}): {" ".join(cmd)} (log: {log_file})')
    return time.time() - t, usage.ru_maxrss * 1024  # Linux reports KiB


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def checkpoint_iteration(path):
    """The iteration of an ``iter_N.pth`` checkpoint."""
    import re
    found = re.search(r'iter_(\d+)\.pth$', path)
    return int(found.group(1)) if found else None


def train_and_test(name, config, work_root, iters, scope):
    work_dir = osp.join(work_root, name)
    train_cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    if iters is not None:
        # the schedule follows (its second scheduler ends at max_iters in both configs)
        train_cmd += ['--cfg-options', f'train_cfg.max_iters={iters}',
                      f'default_hooks.checkpoint.interval={iters}',
                      f'param_scheduler.1.end={iters}',
                      f'default_hooks.logger.interval={max(1, min(10, iters // 4))}']
        if scope == 'mmdet':  # the warm-up is 50 of 150 iterations by default
            train_cmd += [f'param_scheduler.0.end={min(50, max(1, iters // 3))}',
                          f'param_scheduler.1.milestones=[{int(iters * 0.75)},'
                          f'{int(iters * 0.9)}]']
        else:  # the poly schedule starts after the warm-up (20 iterations, fewer if short)
            warmup = min(20, max(1, iters // 5))
            train_cmd += [f'param_scheduler.0.end={warmup}',
                          f'param_scheduler.1.begin={warmup}']
    t_train, train_rss = run(train_cmd, osp.join(work_dir, 'train.log'))
    ckpt = last_checkpoint(work_dir)
    out = osp.join(work_dir, 'pred_png' if scope == 'mmseg' else 'predictions.pkl')
    metrics_json = osp.join(work_dir, 'metrics.json')
    test_cmd = [sys.executable, 'tools/test.py', config, ckpt,
                '--work-dir', osp.join(work_dir, 'test'), '--out', out,
                '--show-dir', osp.abspath(osp.join(work_dir, 'show')),
                '--metrics-json', metrics_json]
    t_test, _ = run(test_cmd, osp.join(work_dir, 'test.log'))
    with open(metrics_json) as f:
        metrics = json.load(f)
    return dict(work_dir=work_dir, checkpoint=ckpt, iteration=checkpoint_iteration(ckpt),
                predictions=out, metrics=metrics, train_s=round(t_train, 1),
                test_s=round(t_test, 1), train_peak_rss_mib=round(train_rss / 2 ** 20))


def _paint_instances(ax, img, instances, classes):
    """Draws (mask, box, label, score or None) instances on img into ax."""
    import matplotlib.pyplot as plt
    import numpy as np
    img = img.copy()
    for mask, _, label, _ in instances:
        colour = np.array(DET_COLOURS[label % len(DET_COLOURS)])
        img[mask] = 0.45 * img[mask] + 0.55 * colour
    ax.imshow(np.clip(img, 0, 1))
    for _, (x0, y0, x1, y1), label, score in instances:
        colour = DET_COLOURS[label % len(DET_COLOURS)]
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=colour, linewidth=1.5))
        text = classes[label] if score is None else f'{classes[label]} {score:.2f}'
        ax.text(x0, y0 - 1, text, fontsize=7, color='white', va='bottom',
                bbox=dict(facecolor=colour, alpha=0.8, pad=0.5, linewidth=0))


def det_picture(pred_file, ann_file, out_file, classes, title, num=4, score_thr=0.5):
    """Rows of image | ground truth | prediction (masks, boxes, classes, scores) of the
    first ``num`` val images."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    import pickle
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    with open(pred_file, 'rb') as f:
        results = pickle.load(f)
    results = sorted(results, key=lambda r: r['img_path'])[:num]
    coco = COCO(ann_file)
    by_name = {img['file_name']: img['id'] for img in coco.dataset['images']}
    cat_ids = coco.getCatIds(catNms=list(classes))
    label_of = {cat: i for i, cat in enumerate(cat_ids)}
    fig, axes = plt.subplots(len(results), 3, figsize=(7.5, 2.5 * len(results) + 0.5),
                             dpi=100)
    axes = np.atleast_2d(axes)
    for row, res in zip(axes, results):
        img = mmcv.imread(res['img_path'], channel_order='rgb').astype(np.float32) / 255
        anns = coco.loadAnns(coco.getAnnIds(imgIds=by_name[osp.basename(res['img_path'])]))
        truth = [(coco.annToMask(a).astype(bool),
                  (a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                   a['bbox'][1] + a['bbox'][3]), label_of[a['category_id']], None)
                 for a in anns if a['category_id'] in label_of]
        pred = res['pred_instances']
        predicted = []
        for i, score in enumerate(pred['scores']):
            if float(score) < score_thr:
                continue
            m = pred['masks'][i]
            m = mask_utils.decode(m).astype(bool) if isinstance(m, dict) else \
                np.asarray(m).astype(bool)
            predicted.append((m, [float(v) for v in pred['bboxes'][i]],
                              int(pred['labels'][i]), float(score)))
        row[0].imshow(img)
        _paint_instances(row[1], img, truth, classes)
        _paint_instances(row[2], img, predicted, classes)
        for ax, name in zip(row, [osp.basename(res['img_path']), 'ground truth',
                                  f'prediction (score >= {score_thr})']):
            ax.set_title(name, fontsize=8)
            ax.axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def seg_picture(pred_dir, data_root, out_file, title, num=4):
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
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def cls_picture(pred_file, out_file, classes, title, num=16, cols=8):
    """``num`` val images spread over the classes, each titled 'truth -> prediction
    (score)', wrong ones in red."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import numpy as np
    import pickle
    with open(pred_file, 'rb') as f:
        results = sorted(pickle.load(f), key=lambda r: r['img_path'])  # by class folder
    results = results[::max(1, len(results) // num)][:num]
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.8 * rows + 0.4), dpi=100)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis('off')
    for ax, res in zip(np.atleast_1d(axes).ravel(), results):
        truth, pred = int(res['gt_label'][0]), int(res['pred_label'][0])
        ax.imshow(mmcv.imread(res['img_path'], channel_order='rgb'), interpolation='nearest')
        ax.set_title(f"{classes[truth]} -> {classes[pred]}\n"
                     f"({float(res['pred_score'][pred]):.2f})", fontsize=7,
                     color='black' if truth == pred else 'red')
    fig.suptitle(title, fontsize=9)
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


#: name -> (task, config, what the pictures and tables call it, output prefix)
MODELS = {
    'mask_rcnn_rednet50': ('det', DET_CONFIG, 'Mask R-CNN RedNet-50', 'mask_rcnn'),
    'mask_rcnn_r50': ('det', DET_R50_CONFIG, 'Mask R-CNN ResNet-50', 'mask_rcnn_r50'),
    'fpn_rednet50': ('seg', SEG_CONFIG, 'Semantic FPN RedNet-50', 'fpn'),
    'fpn_r50': ('seg', SEG_R50_CONFIG, 'Semantic FPN ResNet-50', 'fpn_r50'),
    'rednet26_cls': ('cls', CLS_CONFIG, 'RedNet-26 classifier', 'rednet26_cls'),
}
#: task -> (the scope of its configs, the dataset it trains on)
TASKS = {'det': ('mmdet', 'synthetic COCO'), 'seg': ('mmseg', 'synthetic Cityscapes'),
         'cls': ('mmpretrain', 'synthetic ImageNet')}
#: the input size of each task's training (det: the images; seg: the crops), for FLOPs
TRAIN_SHAPES = {'det': (128, 128), 'seg': (128, 256)}


def machine():
    """CPU model, the op's kernel ISA, cores: what every figure of the demo depends on."""
    import platform
    model = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f
                          if line.startswith('model name')), model)
    except OSError:
        pass
    info = dict(cpu=model, cpus=os.cpu_count())
    try:
        import torch
        import involution_mm  # noqa: F401
        info['involution_kernel_isa'] = torch.ops.involution_mm.cpu_kernel_isa()
        info['torch_threads'] = torch.get_num_threads()
    except Exception as err:  # reported, not fatal: the figures stand without it
        info['involution_kernel_isa'] = f'unknown ({type(err).__name__})'
    return info


def train_model(name, args, find_scalars, plot_losses):
    task, config, label, prefix = MODELS[name]
    iters = getattr(args, f'{task}_iters')
    scope, data = TASKS[task]
    print(f'== {label} on {data} ==', flush=True)
    res = train_and_test(prefix, config, args.work_dir, iters, scope)
    it = res['iteration']
    pic = osp.join(args.work_dir, f'{prefix}_predictions.png')
    pic_title = f'{label}, from scratch, iteration {it}: {data} val'
    if task == 'det':
        from involution_mm.datasets import COCO_SYNTH_CLASSES
        det_picture(res['predictions'], osp.join(args.data_dir, 'synthetic_coco', 'annotations',
                                                 'instances_val2017.json'), pic,
                    COCO_SYNTH_CLASSES, pic_title)
    elif task == 'seg':
        seg_picture(res['predictions'], osp.join(args.data_dir, 'synthetic_cityscapes'), pic,
                    pic_title)
    else:
        from involution_mm.datasets import IMAGENET_SYNTH_CLASSES
        cls_picture(res['predictions'], pic, IMAGENET_SYNTH_CLASSES, pic_title)
    curve = plot_curve(find_scalars, plot_losses, res['work_dir'],
                       osp.join(args.work_dir, f'{prefix}_loss.png'),
                       f'{label}, {data} train, iterations 1-{it}')
    res.update(predictions_png=pic, loss_png=curve, config=config, label=label)
    return res


def check_metrics(name, res, args):
    m = res['metrics']
    if MODELS[name][0] == 'cls':
        top1 = m.get('accuracy/top1', 0)
        return [f'{name}: top-1 {top1} < {args.min_top1}'] if top1 < args.min_top1 else []
    if MODELS[name][0] == 'det':
        return [f"{name}: {key} {m.get('coco/' + key)} < {low}"
                for key, low in (('bbox_mAP', args.min_bbox_ap), ('segm_mAP', args.min_segm_ap))
                if m.get('coco/' + key, 0) < low]
    return [f"{name}: mIoU {m.get('mIoU')} < {args.min_miou}"] if m.get('mIoU', 0) < \
        args.min_miou else []


def main(argv=None):
    args = parse_args(argv)
    for name in ('det_iters', 'seg_iters', 'cls_iters'):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            raise SystemExit(f'--{name.replace("_", "-")} must be at least 2')
    os.chdir(ROOT)
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
    from plot_curves import find_scalars, plot_losses  # tools/analysis/plot_curves.py
    t0 = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    run([sys.executable, 'tools/dataset_converters/make_synthetic_data.py', '--out-dir',
         args.data_dir], osp.join(args.work_dir, 'make_data.log'), echo=('synthetic', ))
    summary = dict(machine=machine(), runs={})
    names = [n for n, (task, *_) in MODELS.items() if args.only in (None, task)
             and (args.compare or 'rednet' in n)]
    failures = []
    if 'rednet26_cls' in names:
        from involution_mm.utils.runtime import UnsupportedSetupError, check_scope_available
        try:
            check_scope_available(dict(default_scope='mmpretrain'))
        except UnsupportedSetupError as err:
            if args.only == 'cls':
                raise SystemExit(f'--only cls: {err}')
            names.remove('rednet26_cls')
            summary['skipped'] = {'rednet26_cls': str(err)}
            print(f'== RedNet-26 classifier skipped: {err}', flush=True)
    for name in names:
        summary['runs'][name] = train_model(name, args, find_scalars, plot_losses)
        # the thresholds check that training works; they are RedNet's (ResNet is compared)
        if 'rednet' in name:
            failures += check_metrics(name, summary['runs'][name], args)
    if args.compare:
        from demo_compare import write_comparison  # tools/demo_compare.py
        summary['comparison'] = write_comparison(summary, MODELS, TRAIN_SHAPES, args.work_dir)
    summary['total_s'] = round(time.time() - t0, 1)
    with open(osp.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)

    print('\n================ demo summary (synthetic data, from scratch, CPU) ================')
    print(f"machine: {summary['machine']}")
    for name, res in summary['runs'].items():
        m = res['metrics']
        if 'accuracy/top1' in m:
            score = f"top-1 {m['accuracy/top1']:.2f} %"
        elif 'coco/bbox_mAP' in m:
            score = f"bbox_mAP {m['coco/bbox_mAP']:.3f}  segm_mAP {m['coco/segm_mAP']:.3f}  " \
                    f"(AP50 {m['coco/bbox_mAP_50']:.3f} / {m['coco/segm_mAP_50']:.3f})"
        else:
            score = f"mIoU {m['mIoU']:.2f}  aAcc {m.get('aAcc', float('nan')):.2f}"
        print(f'{name:22s} {score}   train {res["train_s"]:.0f} s, test {res["test_s"]:.0f} s')
        print(f'{"":22s} {res["predictions_png"]}  {res["loss_png"]}')
    if args.compare:
        print(summary['comparison']['markdown'])
    print(f'total wall time {summary["total_s"]:.0f} s; summary: '
          f'{osp.join(args.work_dir, "summary.json")}')
    if failures and not args.no_check:
        print('demo check FAILED (the models learned less than expected): '
              + '; '.join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
