#!/usr/bin/env python
"""Plot the training losses of an mmengine work dir (its vis_data/scalars.json) to a PNG.

Examples:
  python tools/analysis/plot_curves.py work_dirs/demo/mask_rcnn --out loss.png
  python tools/analysis/plot_curves.py work_dirs/x/20240101_000000/vis_data/scalars.json
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys


def find_scalars(path):
    """The scalars.json of the latest training run under ``path`` (a work dir, a run dir
    or the file itself), or None."""
    if osp.isfile(path):
        return path
    candidates = glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')) + \
        glob.glob(osp.join(path, 'vis_data', 'scalars.json'))
    # keep runs that logged training losses (a test run logs only metrics)
    train_runs = []
    for c in candidates:
        with open(c) as f:
            if any('"loss"' in line for line in f):
                train_runs.append(c)
    return max(train_runs, key=osp.getmtime) if train_runs else None


def read_scalars(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_losses(scalars_file, out_file, title=None):
    """Writes a PNG of 'loss' and its components against the iteration; returns the
    (iterations, total losses) plotted."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in read_scalars(scalars_file) if 'loss' in r]
    if not rows:
        raise ValueError(f'{scalars_file}: no training losses logged')
    step_key = 'iter' if 'iter' in rows[0] else 'step'
    steps = [r[step_key] for r in rows]
    keys = [k for k in rows[0] if 'loss' in k and k != 'loss']
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(steps, [r['loss'] for r in rows], color='black', linewidth=2.2, label='loss')
    for k in keys:
        ax.plot(steps, [r.get(k, float('nan')) for r in rows], linewidth=1.2, label=k)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title or osp.basename(osp.dirname(osp.dirname(osp.dirname(scalars_file)))))
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file)
    plt.close(fig)
    return steps, [r['loss'] for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description='Plot the training loss curve of a work dir')
    p.add_argument('path', help='work dir, run dir or scalars.json')
    p.add_argument('--out', default='loss_curve.png')
    p.add_argument('--title', default=None)
    args = p.parse_args(argv)
    scalars = find_scalars(args.path)
    if scalars is None:
        print(f'no scalars.json with training losses under {args.path}', file=sys.stderr)
        return 1
    plot_losses(scalars, args.out, args.title)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
