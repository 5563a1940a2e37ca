"""The RedNet-vs-ResNet table of ``tools/demo.py --compare``: for each task, the two models
trained on the same data, schedule and seed, side by side: metrics, parameters, FLOPs
(tools/analysis/get_flops.py at the training input size), training time per iteration and
peak resident memory of the training process. Writes compare.json, compare.md and
compare.png (RedNet / ResNet ratios) into the demo's work dir.
"""
import json
import os.path as osp
import re
import statistics
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: (metric key in tools/test.py's metrics, column name), per task
METRICS = {'det': [('coco/bbox_mAP', 'bbox AP'), ('coco/segm_mAP', 'mask AP')],
           'seg': [('mIoU', 'mIoU')]}


def flops_and_params(config, shape):
    """(params in M, GFLOPs as multiply-adds) from tools/analysis/get_flops.py."""
    out = subprocess.run([sys.executable, 'tools/analysis/get_flops.py', config, '--shape',
                          str(shape[0]), str(shape[1])], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True).stdout
    params = re.search(r'params: ([\d.]+) M', out)
    flops = re.search(r'FLOPs \(multiply-adds\): ([\d.]+) G', out)
    if not (params and flops):
        raise RuntimeError(f'get_flops.py printed no params/FLOPs for {config}:\n{out[-2000:]}')
    return float(params.group(1)), float(flops.group(1))


def seconds_per_iteration(work_dir):
    """Median of the logged training times per iteration, the first log interval left out
    (it holds the start-up: first allocations, thread pools)."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
    from plot_curves import find_scalars, read_scalars
    times = [r['time'] for r in read_scalars(find_scalars(work_dir)) if 'time' in r
             and 'loss' in r]
    return statistics.median(times[1:] if len(times) > 1 else times)


def write_comparison(summary, models, shapes, work_dir):
    rows = []
    for name, res in summary['runs'].items():
        task = models[name][0]
        if task not in METRICS:  # no ResNet counterpart to compare with (classification)
            continue
        params, gflops = flops_and_params(res['config'], shapes[task])
        row = dict(model=name, label=res['label'], task=task, config=res['config'],
                   iterations=res['iteration'], params_m=params, gflops=gflops,
                   input_shape=list(shapes[task]),
                   s_per_iter=round(seconds_per_iteration(res['work_dir']), 3),
                   peak_rss_mib=res['train_peak_rss_mib'], train_s=res['train_s'])
        row.update({column: round(float(res['metrics'][key]), 4)
                    for key, column in METRICS[task]})
        rows.append(row)
    pairs = {}
    for row in rows:
        pairs.setdefault(row['task'], {})['rednet' if 'rednet' in row['model'] else 'resnet'] \
            = row
    ratios = {task: {k: pair['rednet'][k] / pair['resnet'][k]
                     for k in ['params_m', 'gflops', 's_per_iter', 'peak_rss_mib']
                     + [c for _, c in METRICS[task]] if pair['resnet'][k]}
              for task, pair in pairs.items() if len(pair) == 2}
    result = dict(command=' '.join(['python'] + [osp.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
                  machine=summary['machine'], rows=rows, rednet_over_resnet=ratios,
                  notes=['from scratch on the synthetic data; same config, data, schedule, '
                         'seed and input size for both backbones',
                         'FLOPs: multiply-adds of one image at the training input size '
                         '(Mask R-CNN: with its test-time proposals, counted on random '
                         'weights)',
                         's_per_iter: median logged training time per iteration',
                         'peak_rss_mib: peak resident memory of the training process '
                         '(includes the Python, framework and data-loading baseline)'])
    result['markdown'] = markdown(result)
    with open(osp.join(work_dir, 'compare.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(osp.join(work_dir, 'compare.md'), 'w') as f:
        f.write(result['markdown'] + '\n')
    plot(result, osp.join(work_dir, 'compare.png'))
    result['png'] = osp.join(work_dir, 'compare.png')
    return result


def markdown(result):
    m = result['machine']
    lines = [f"RedNet-50 vs ResNet-50, from scratch on the synthetic data ({m['cpu']}, "
             f"{m['cpus']} CPUs, involution kernels {m.get('involution_kernel_isa')}, "
             f"{m.get('torch_threads')} torch threads)", '',
             '| model | iterations | result | params (M) | GFLOPs (input) | s / iter | '
             'peak RSS (MiB) |', '|---|---:|---|---:|---:|---:|---:|']
    for r in result['rows']:
        score = ', '.join(f'{c} {r[c]:.3f}' if c != 'mIoU' else f'{c} {r[c]:.2f}'
                          for _, c in METRICS[r['task']])
        h, w = r['input_shape']
        lines.append(f"| {r['label']} | {r['iterations']} | {score} | {r['params_m']:.2f} | "
                     f"{r['gflops']:.2f} ({h}x{w}) | {r['s_per_iter']:.2f} | "
                     f"{r['peak_rss_mib']} |")
    lines.append('')
    for task, ratio in result['rednet_over_resnet'].items():
        lines.append(f'RedNet / ResNet ({task}): ' + ', '.join(
            f'{k} {v:.2f}x' for k, v in ratio.items()))
    return '\n'.join(lines)


def plot(result, out_file):
    """One figure: RedNet / ResNet ratio of each quantity, per task (1 = the same)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = {'params_m': 'params', 'gflops': 'FLOPs', 's_per_iter': 's / iter',
             'peak_rss_mib': 'peak RSS', 'bbox AP': 'bbox AP', 'mask AP': 'mask AP',
             'mIoU': 'mIoU'}
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=110)
    tasks = list(result['rednet_over_resnet'])
    width = 0.8 / max(1, len(tasks))
    labels = list(dict.fromkeys(k for t in tasks for k in result['rednet_over_resnet'][t]))
    for i, task in enumerate(tasks):
        ratio = result['rednet_over_resnet'][task]
        xs = [j + (i - (len(tasks) - 1) / 2) * width for j, k in enumerate(labels)
              if k in ratio]
        ys = [ratio[k] for k in labels if k in ratio]
        bars = ax.bar(xs, ys, width, label={'det': 'Mask R-CNN', 'seg': 'Semantic FPN'}[task])
        ax.bar_label(bars, fmt='%.2f', fontsize=7)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(labels)), [names.get(k, k) for k in labels])
    ax.set_ylabel('RedNet-50 / ResNet-50')
    m = result['machine']
    iters = ', '.join(f"{r['label']} {r['iterations']} it" for r in result['rows']
                      if 'rednet' in r['model'])
    ax.set_title(f'RedNet-50 vs ResNet-50 from scratch, synthetic data ({iters})\n'
                 f"{m['cpu']}, {m['cpus']} CPUs; below 1: RedNet smaller/faster/lower",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)
