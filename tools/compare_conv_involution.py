"""Same small network, convolutions vs. involutions: accuracy, parameters and training time.

Trains one small network definition in two variants, with the same seed, data split,
optimizer, schedule, batch size and number of epochs, on two built-in datasets, and reports
test accuracy (mean and spread over seeds), trainable parameters and training time per epoch,
as a Markdown table (printed and written to ``results.md``), ``results.json`` and a plot
``accuracy_vs_params.png`` (accuracy against parameters, marker area = time per epoch).

Default command (about 3 minutes of CPU on one thread; 4 min 10 s of wall time measured on a
2-core Xeon shared with other jobs, load average about 4.5)::

    python tools/compare_conv_involution.py

Other examples::

    python tools/compare_conv_involution.py --quick                 # seconds, for tests
    python tools/compare_conv_involution.py --device cpu cuda       # time both devices
    python tools/compare_conv_involution.py --kernel-size 5 --widths 32 64

The network (``SmallNet``); widths (w1, w2) = (16, 32) and K = 3 by default::

    stem (H x W):             Conv2d(C_in, w1, 3, padding=1, bias=False) - BN - ReLU
    stage 1 (H x W):          spatial(w1 -> w1)   - BN - ReLU
                              spatial(w1 -> w1)   - BN - ReLU - MaxPool(2, 2)
    stage 2 (H/2 x W/2):      spatial(w1 -> w2)   - BN - ReLU
                              spatial(w2 -> w2)   - BN - ReLU
    head:                     global average pool - Linear(w2 -> num_classes)

(more widths add more stages, each but the last ending with MaxPool(2, 2)). ``spatial`` is
the only part that differs between the variants:

    conv:        Conv2d(a, b, K, padding=K // 2, bias=False)
    involution:  [Conv2d(a, b, 1, bias=False) if a != b]  then
                 involution_mm.ops.Involution(b, K, reduction_ratio=r, group_channels=gc)

The stem is the same 3x3 convolution in both variants, as in RedNet (whose stem also starts
with a 3x3 conv): an involution on a 1-channel image would generate each pixel's kernel from
that pixel's grey level alone. ``--swap-stem`` replaces the stem too (stem = spatial(C_in ->
w1), i.e. 1x1 conv + involution in the involution variant), which is what "swap every
convolution" means; expect the involution variant to lose more accuracy then.

Involution keeps the channel count, so the involution variant changes channels with a 1x1
conv (only where a != b). ``Involution`` is the project's module: a kernel-generation branch
(1x1 ConvModule b -> b/r with BN and ReLU, then a biased 1x1 conv to K*K*G channels,
G = b / gc) followed by the compiled involution op. Because the widths are small the default
uses group_channels gc = 4 (RedNet uses 16) and reduction_ratio r = 4, so a 16-channel layer
has G = 4 kernels per pixel and a 32-channel layer G = 8.

Trainable parameters (n classes; BN has 2 per channel; sums over the spatial layers a -> b;
stem = 9 C_in w1 + 2 w1, or one more spatial layer C_in -> w1 with ``--swap-stem``)::

    conv:        stem + sum K^2 a b                     + 2 sum b + (w_last + 1) n
    involution:  stem + sum_{a != b} a b + sum P_inv(b) + 2 sum b + (w_last + 1) n
    P_inv(c) = c (c/r) + 2 (c/r) + (c/r + 1) K^2 (c/gc)

Digits (C_in = 1, n = 10), defaults: conv 19,130 and involution 3,554 parameters.

Datasets (all in memory, standardised with the training-set mean and std):

* ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 grey images of 10 handwritten
  digits, shipped inside scikit-learn, no download).
* ``shapes``: a deterministic synthetic set generated here (``make_shapes``): 16x16 grey
  images of six classes (disk, ring, square, frame = square outline, triangle, cross) with
  random position, size, rotation, contrast and Gaussian noise; 300 images per class by
  default, fixed by ``--data-seed``.

Protocol: one stratified 70/30 train/test split per dataset, fixed by ``--data-seed`` and the
same for every seed and variant. ``--seeds`` change the weight initialisation and the order
of the mini-batches. AdamW (lr 3e-3, weight decay 1e-4), cosine decay per step to 0, batch
32 (the last incomplete batch of an epoch is dropped so BN never sees a batch of 1),
cross-entropy, no augmentation, test accuracy after the last epoch (no early stopping and
no model selection on the test set). Time per epoch is the wall time of the training loop
only (forward, backward, optimizer step; no evaluation), the median over the epochs of a
run, then the mean over seeds, with one torch thread by default (``--threads``): the networks
are tiny, and with two threads on two cores any other load on the machine made epoch times
jump by 10x or more. Seeds run in the outer loop and the two variants alternate, so a change
of machine load hits both; the JSON records the 1-minute load average at start and end.
Without the compiled extension, involution falls back to the slow unfold reference; the
output says so (``involution_extension`` in the JSON).
"""
import argparse
import datetime
import json
import math
import os
import os.path as osp
import platform
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATASETS = ('digits', 'shapes')
VARIANTS = ('conv', 'involution')
SHAPE_CLASSES = ('disk', 'ring', 'square', 'frame', 'triangle', 'cross')

# The defaults in one place (the docstring and the tests rely on them).
DEFAULTS = dict(widths=(16, 32), kernel_size=3, group_channels=4, reduction_ratio=4,
                epochs=20, batch_size=32, lr=3e-3, weight_decay=1e-4, seeds=(0, 1, 2),
                data_seed=0, test_fraction=0.3, shapes_per_class=300, shapes_size=16,
                threads=1)
QUICK = dict(epochs=2, seeds=(0,), max_train=192, max_test=96, shapes_per_class=50)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------
def load_digits_dataset():
    """scikit-learn's digits: (N, 1, 8, 8) float32 in [0, 1], int64 labels, 10 classes."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    return x, digits.target.astype(np.int64), [str(i) for i in range(10)]


def _shape_mask(cls, u, v, r):
    """Boolean mask of shape ``cls`` of size ``r`` in rotated, centred coordinates (u, v)."""
    thickness = max(1.2, 0.35 * r)
    if cls == 'disk':
        return u * u + v * v <= r * r
    if cls == 'ring':
        d = np.sqrt(u * u + v * v)
        return (d <= r) & (d >= r - thickness)
    half = 0.8 * r  # squares with about the area of the disk
    if cls == 'square':
        return np.maximum(np.abs(u), np.abs(v)) <= half
    if cls == 'frame':
        m = np.maximum(np.abs(u), np.abs(v))
        return (m <= half) & (m >= half - thickness)
    if cls == 'triangle':  # equilateral, circumradius r: inside all three edge half-planes
        inside = np.ones_like(u, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= (u * np.cos(angle) + v * np.sin(angle)) >= -r / 2
        return inside
    if cls == 'cross':
        arm = max(1.0, 0.3 * r)
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ValueError(f'unknown shape class {cls!r}')


def make_shapes(n_per_class=300, size=16, seed=0, noise=0.15):
    """The ``shapes`` dataset: deterministic for a given (n_per_class, size, seed, noise).

    Each image: background level in [0, 0.3], one shape of class ``SHAPE_CLASSES[y]`` with
    level in [0.6, 1.0], radius in [0.2, 0.4] * size, random rotation and centre (the shape
    stays inside the image), plus Gaussian noise of std ``noise``; values are not clipped.

    Returns:
        x (N, 1, size, size) float32, y (N,) int64 (classes interleaved), class names.
    """
    if n_per_class < 1 or size < 8:
        raise ValueError(f'make_shapes: need n_per_class >= 1 and size >= 8, got '
                         f'{n_per_class} and {size}')
    rng = np.random.default_rng(seed)
    n = n_per_class * len(SHAPE_CLASSES)
    labels = np.tile(np.arange(len(SHAPE_CLASSES)), n_per_class)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images = np.empty((n, size, size), dtype=np.float32)
    for i, label in enumerate(labels):
        r = rng.uniform(0.2, 0.4) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        bg, fg = rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)
        dx, dy = xs - cx, ys - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask = _shape_mask(SHAPE_CLASSES[label], u, v, r)
        images[i] = bg + (fg - bg) * mask + rng.normal(0.0, noise, size=(size, size))
    return images[:, None], labels.astype(np.int64), list(SHAPE_CLASSES)


def load_dataset(name, data_seed=0, test_fraction=0.3, shapes_per_class=300, shapes_size=16,
                 max_train=None, max_test=None):
    """Stratified, standardised train/test tensors of dataset ``name`` (see module doc)."""
    from sklearn.model_selection import train_test_split
    if name == 'digits':
        x, y, classes = load_digits_dataset()
    elif name == 'shapes':
        x, y, classes = make_shapes(shapes_per_class, shapes_size, seed=data_seed)
    else:
        raise ValueError(f'unknown dataset {name!r}; choose from {", ".join(DATASETS)}')
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=data_seed)
    if max_train is not None:
        x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
    if max_test is not None:
        x_te, y_te = x_te[:max_test], y_te[:max_test]
    mean, std = float(x_tr.mean()), float(x_tr.std()) + 1e-6
    return dict(name=name, classes=classes,
                x_train=torch.from_numpy((x_tr - mean) / std), y_train=torch.from_numpy(y_tr),
                x_test=torch.from_numpy((x_te - mean) / std), y_test=torch.from_numpy(y_te))


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------
def spatial_layer(variant, in_channels, out_channels, kernel_size, group_channels,
                  reduction_ratio):
    """The only part that differs: a KxK conv, or [1x1 conv if channels change] + Involution."""
    if variant == 'conv':
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=False)
    if variant == 'involution':
        from involution_mm.ops import Involution
        layers = []
        if in_channels != out_channels:
            layers.append(nn.Conv2d(in_channels, out_channels, 1, bias=False))
        layers.append(Involution(out_channels, kernel_size, reduction_ratio=reduction_ratio,
                                 group_channels=group_channels))
        return nn.Sequential(*layers)
    raise ValueError(f'unknown variant {variant!r}; choose from {", ".join(VARIANTS)}')


class SmallNet(nn.Module):
    """The network of the module docstring, in variant ``'conv'`` or ``'involution'``."""

    def __init__(self, in_channels, num_classes, variant='conv', widths=DEFAULTS['widths'],
                 kernel_size=DEFAULTS['kernel_size'],
                 group_channels=DEFAULTS['group_channels'],
                 reduction_ratio=DEFAULTS['reduction_ratio'], swap_stem=False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f'unknown variant {variant!r}; choose from {", ".join(VARIANTS)}')
        self.variant = variant
        w1 = widths[0]
        if swap_stem:
            stem = spatial_layer(variant, in_channels, w1, kernel_size, group_channels,
                                 reduction_ratio)
        else:
            stem = nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        stages = []
        prev = w1
        for i, width in enumerate(widths):
            layers = []
            for a, b in ((prev, width), (width, width)):
                layers += [spatial_layer(variant, a, b, kernel_size, group_channels,
                                         reduction_ratio),
                           nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, 2))
            stages.append(nn.Sequential(*layers))
            prev = width
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x):
        x = self.features(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_parameters(variant, in_channels, num_classes, widths=DEFAULTS['widths'],
                        kernel_size=DEFAULTS['kernel_size'],
                        group_channels=DEFAULTS['group_channels'],
                        reduction_ratio=DEFAULTS['reduction_ratio'], swap_stem=False):
    """The parameter count that the definition implies (formula of the module docstring)."""
    k2 = kernel_size * kernel_size
    w1 = widths[0]
    pairs = [(in_channels, w1)] if swap_stem else []   # the spatial layers a -> b
    prev = w1
    for width in widths:
        pairs += [(prev, width), (width, width)]
        prev = width
    stem = 0 if swap_stem else 9 * in_channels * w1 + 2 * w1

    def p_inv(c):
        mid = c // reduction_ratio
        return c * mid + 2 * mid + (mid + 1) * k2 * (c // group_channels)

    if variant == 'conv':
        spatial = sum(k2 * a * b for a, b in pairs)
    elif variant == 'involution':
        spatial = sum(a * b for a, b in pairs if a != b) + sum(p_inv(b) for _, b in pairs)
    else:
        raise ValueError(f'unknown variant {variant!r}')
    return stem + spatial + 2 * sum(b for _, b in pairs) + (widths[-1] + 1) * num_classes


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def make_optimizer(model, lr=DEFAULTS['lr'], weight_decay=DEFAULTS['weight_decay']):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_steps(model, x, y, steps, lr=DEFAULTS['lr']):
    """``steps`` optimizer steps on one batch (x, y); returns the losses (for the tests)."""
    model.train()
    optimizer = make_optimizer(model, lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, x, y, batch_size=512):
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        correct += (logits.argmax(1) == y[start:start + batch_size]).sum().item()
    return correct / len(x)


def train_one(data, variant, seed, device, epochs, batch_size, lr, weight_decay, widths,
              kernel_size, group_channels, reduction_ratio, swap_stem=False):
    """Trains one (dataset, variant, seed) on ``device``; returns its measurements."""
    torch.manual_seed(seed)
    model = SmallNet(data['x_train'].shape[1], len(data['classes']), variant, widths,
                     kernel_size, group_channels, reduction_ratio, swap_stem).to(device)
    x_tr, y_tr = data['x_train'].to(device), data['y_train'].to(device)
    x_te, y_te = data['x_test'].to(device), data['y_test'].to(device)
    n = len(x_tr)
    steps_per_epoch = max(1, n // batch_size)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    epoch_times, epoch_losses = [], []
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_gen).to(device)
        model.train()
        total = torch.zeros((), device=device)
        _sync(device)
        start = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach()
        _sync(device)
        epoch_times.append(time.perf_counter() - start)
        epoch_losses.append(total.item() / steps_per_epoch)
    _sync(device)
    start = time.perf_counter()
    test_acc = evaluate(model, x_te, y_te)
    _sync(device)
    eval_time = time.perf_counter() - start
    return dict(seed=seed, test_acc=test_acc, train_acc=evaluate(model, x_tr, y_tr),
                epoch_time_s=float(np.median(epoch_times)), epoch_times_s=epoch_times,
                train_loss=epoch_losses, eval_time_s=eval_time,
                params=count_parameters(model))


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------
def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(devices):
    from involution_mm.ops import HAS_EXTENSION
    import involution_mm
    info = dict(platform=platform.platform(), python=platform.python_version(),
                cpu=cpu_name(), cpu_count=os.cpu_count(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), involution_mm=involution_mm.__version__,
                involution_extension=bool(HAS_EXTENSION),
                command=' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv),
                date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec='seconds'))
    if 'cuda' in devices:
        info['gpu'] = torch.cuda.get_device_name(0)
        info['cuda'] = torch.version.cuda
    return info


def summarise(runs):
    accs = np.array([r['test_acc'] for r in runs]) * 100
    times = np.array([r['epoch_time_s'] for r in runs])
    return dict(acc_mean=float(accs.mean()),
                acc_std=float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                acc_min=float(accs.min()), acc_max=float(accs.max()),
                epoch_time_mean_s=float(times.mean()),
                epoch_time_std_s=float(times.std(ddof=1)) if len(times) > 1 else 0.0)


def markdown_table(results, n_seeds):
    lines = ['| Dataset | Model | Device | Params | Params vs conv | '
             f'Test acc. % (mean ± std, {n_seeds} seed{"s" if n_seeds > 1 else ""}) | '
             'Min-max % | Train s/epoch | Time vs conv |',
             '|---|---|---|---:|---:|---:|---:|---:|---:|']
    by_key = {(r['dataset'], r['variant'], r['device']): r for r in results}
    for r in results:
        ref = by_key.get((r['dataset'], 'conv', r['device']))
        s = r['summary']
        p_ratio = f'{r["params"] / ref["params"]:.2f}x' if ref else '-'
        t_ratio = (f'{s["epoch_time_mean_s"] / ref["summary"]["epoch_time_mean_s"]:.2f}x'
                   if ref else '-')
        lines.append(
            f'| {r["dataset"]} | {r["variant"]} | {r["device"]} | {r["params"]:,} | '
            f'{p_ratio} | {s["acc_mean"]:.1f} ± {s["acc_std"]:.1f} | '
            f'{s["acc_min"]:.1f}-{s["acc_max"]:.1f} | {s["epoch_time_mean_s"]:.3f} | '
            f'{t_ratio} |')
    return '\n'.join(lines)


def plot_results(results, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = {'conv': 'tab:blue', 'involution': 'tab:orange'}
    markers = {'digits': 'o', 'shapes': 's'}
    device_edge = {'cpu': 'black', 'cuda': 'tab:green'}
    max_time = max(r['summary']['epoch_time_mean_s'] for r in results) or 1.0
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        s = r['summary']
        size = 60 + 900 * s['epoch_time_mean_s'] / max_time
        ax.scatter(r['params'], s['acc_mean'], s=size, c=colors[r['variant']],
                   marker=markers.get(r['dataset'], 'D'), alpha=0.7,
                   edgecolors=device_edge.get(r['device'], 'black'), linewidths=1.2, zorder=2)
        ax.errorbar(r['params'], s['acc_mean'], yerr=s['acc_std'], fmt='none',
                    ecolor='black', elinewidth=1, capsize=3, zorder=3)
        ax.annotate(f'{r["dataset"]} / {r["variant"]} / {r["device"]}\n'
                    f'{s["acc_mean"]:.1f}%, {s["epoch_time_mean_s"]:.2f} s/epoch',
                    (r['params'], s['acc_mean']), textcoords='offset points',
                    xytext=(math.sqrt(size) / 2 + 4, 0), va='center', fontsize=7)
    ax.set_xscale('log')
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:,.0f}'))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('trainable parameters (log scale)')
    ax.set_ylabel('test accuracy % (mean ± std over seeds)')
    ax.set_title(title, fontsize=9)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker='o', ls='', color=c, label=v, markersize=9)
               for v, c in colors.items()]
    handles += [Line2D([], [], marker=m, ls='', color='grey', label=d, markersize=9)
                for d, m in markers.items()]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title='marker area =\ntrain time per epoch\n(bars: std over seeds)',
              title_fontsize=7)
    xmin = min(r['params'] for r in results)
    xmax = max(r['params'] for r in results)
    ax.set_xlim(xmin / 2, xmax * 3.5)
    ax.grid(True, which='both', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def number_arg(convert, description, in_range):
    """An argparse type: ``convert(text)``, which must satisfy ``in_range``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a {description}, got {text!r}')
        if not in_range(value):
            raise argparse.ArgumentTypeError(f'must be a {description}, got {text}')
        return value
    return parse


positive_int = number_arg(int, 'positive integer', lambda v: v > 0)
nonnegative_int = number_arg(int, 'non-negative integer', lambda v: v >= 0)
nonnegative_float = number_arg(float, 'non-negative number',
                               lambda v: v >= 0 and math.isfinite(v))


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


def build_parser():
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        description='Train the same small network with convolutions and with involutions '
                    '(involution_mm.ops.Involution) on small built-in datasets and compare '
                    'test accuracy, parameters and training time per epoch.')
    parser.add_argument('--datasets', nargs='+', choices=DATASETS, default=list(DATASETS),
                        metavar='NAME', help=f'datasets, from {{{",".join(DATASETS)}}} '
                                             '(default: both)')
    parser.add_argument('--seeds', nargs='+', type=nonnegative_int, default=None,
                        help='seeds (init and batch order); default 0 1 2, --quick: 0')
    parser.add_argument('--epochs', type=positive_int, default=None,
                        help=f'epochs; default {d["epochs"]}, --quick: {QUICK["epochs"]}')
    parser.add_argument('--batch-size', type=positive_int, default=d['batch_size'])
    parser.add_argument('--lr', type=positive_float, default=d['lr'])
    parser.add_argument('--weight-decay', type=nonnegative_float, default=d['weight_decay'])
    parser.add_argument('--widths', nargs='+', type=positive_int, default=list(d['widths']),
                        help='stage widths (default 16 32)')
    parser.add_argument('--kernel-size', type=positive_int, default=d['kernel_size'],
                        help='K of the convolutions and involutions (odd; default 3)')
    parser.add_argument('--group-channels', type=positive_int, default=d['group_channels'],
                        help='channels per involution kernel (default 4; RedNet uses 16)')
    parser.add_argument('--reduction-ratio', type=positive_int,
                        default=d['reduction_ratio'],
                        help='reduction of the involution kernel branch (default 4)')
    parser.add_argument('--swap-stem', action='store_true',
                        help='replace the shared 3x3 conv stem too (default: keep it, as '
                             'RedNet does)')
    parser.add_argument('--data-seed', type=nonnegative_int, default=d['data_seed'],
                        help='seed of the train/test split and of the shapes generator')
    parser.add_argument('--shapes-per-class', type=positive_int, default=None,
                        help=f'shapes images per class (default {d["shapes_per_class"]}, '
                             f'--quick: {QUICK["shapes_per_class"]})')
    parser.add_argument('--shapes-size', type=positive_int, default=d['shapes_size'],
                        help='shapes image size (default 16, at least 8)')
    parser.add_argument('--device', nargs='+', choices=('cpu', 'cuda'), default=['cpu'],
                        help='device(s) to train and time on; each gets its own rows '
                             '(default cpu)')
    parser.add_argument('--threads', type=positive_int, default=d['threads'],
                        help='torch CPU threads for both variants (default 1: these networks '
                             'are too small to gain from more, and one thread keeps the '
                             'timings stable on a shared machine)')
    parser.add_argument('--quick', action='store_true',
                        help=f'smoke run: {QUICK["epochs"]} epochs, seed 0, at most '
                             f'{QUICK["max_train"]} training and {QUICK["max_test"]} test '
                             'images per dataset (seconds)')
    parser.add_argument('--out-dir', default='work_dirs/compare_conv_involution',
                        help='where results.json, results.md and accuracy_vs_params.png go')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kernel_size % 2 == 0:
        parser.error(f'--kernel-size must be odd, got {args.kernel_size}')
    for w in args.widths:
        if w % args.group_channels:
            parser.error(f'--widths: {w} is not divisible by --group-channels '
                         f'{args.group_channels}')
        if w // args.reduction_ratio < 1:
            parser.error(f'--reduction-ratio {args.reduction_ratio} leaves no channels of '
                         f'width {w} in the involution kernel branch')
    if args.shapes_size is not None and args.shapes_size < 8:
        parser.error(f'--shapes-size must be at least 8, got {args.shapes_size}')
    if 'cuda' in args.device and not torch.cuda.is_available():
        parser.error('--device cuda was requested but CUDA is not available '
                     f'(torch {torch.__version__}, torch.version.cuda={torch.version.cuda})')
    args.datasets = list(dict.fromkeys(args.datasets))
    args.device = list(dict.fromkeys(args.device))
    if args.seeds is None:
        args.seeds = list(QUICK['seeds'] if args.quick else DEFAULTS['seeds'])
    args.seeds = list(dict.fromkeys(args.seeds))
    if args.epochs is None:
        args.epochs = QUICK['epochs'] if args.quick else DEFAULTS['epochs']
    if args.shapes_per_class is None:
        args.shapes_per_class = (QUICK['shapes_per_class'] if args.quick
                                 else DEFAULTS['shapes_per_class'])
    return args


def run(args):
    """Runs the comparison for parsed ``args``; writes and returns the results dict."""
    torch.set_num_threads(args.threads)
    from involution_mm.ops import HAS_EXTENSION
    if not HAS_EXTENSION:
        print('WARNING: the involution_mm extension is not built; involution runs on the '
              'slow unfold reference and its times are not those of the op.', file=sys.stderr)
    os.makedirs(args.out_dir, exist_ok=True)
    hyper = dict(widths=list(args.widths), kernel_size=args.kernel_size,
                 group_channels=args.group_channels, reduction_ratio=args.reduction_ratio,
                 swap_stem=args.swap_stem)
    results, datasets_info = [], {}
    load_start = _loadavg()
    wall_start = time.perf_counter()
    for name in args.datasets:
        data = load_dataset(name, args.data_seed, DEFAULTS['test_fraction'],
                            args.shapes_per_class, args.shapes_size,
                            QUICK['max_train'] if args.quick else None,
                            QUICK['max_test'] if args.quick else None)
        datasets_info[name] = dict(train=len(data['y_train']), test=len(data['y_test']),
                                   image_shape=list(data['x_train'].shape[1:]),
                                   classes=data['classes'])
        c_in, n_cls = data['x_train'].shape[1], len(data['classes'])
        for dev in args.device:
            device = torch.device(dev)
            # seeds outside, variants inside: a change of machine load hits both variants
            runs = {variant: [] for variant in VARIANTS}
            for seed in args.seeds:
                for variant in VARIANTS:
                    r = train_one(data, variant, seed, device, args.epochs, args.batch_size,
                                  args.lr, args.weight_decay, **hyper)
                    runs[variant].append(r)
                    print(f'[{name} / {variant} / {dev} / seed {seed}] test acc '
                          f'{100 * r["test_acc"]:.1f}%  train acc {100 * r["train_acc"]:.1f}%'
                          f'  loss {r["train_loss"][0]:.3f} -> {r["train_loss"][-1]:.3f}  '
                          f'{r["epoch_time_s"]:.3f} s/epoch', flush=True)
            for variant in VARIANTS:
                results.append(dict(
                    dataset=name, variant=variant, device=dev,
                    params=runs[variant][0]['params'],
                    params_expected=expected_parameters(variant, c_in, n_cls, **hyper),
                    summary=summarise(runs[variant]), runs=runs[variant]))
    total_s = time.perf_counter() - wall_start
    machine = machine_info(args.device)
    machine.update(loadavg_1min_start=load_start, loadavg_1min_end=_loadavg())
    table = markdown_table(results, len(args.seeds))
    stem = ('stem swapped too' if args.swap_stem
            else 'shared 3x3 conv stem')
    notes = (f'SmallNet widths {args.widths}, K={args.kernel_size}, {stem}; involution '
             f'group_channels={args.group_channels} (small because the widths are small; '
             f'RedNet uses 16), reduction_ratio={args.reduction_ratio}. '
             f'AdamW lr {args.lr:g}, wd {args.weight_decay:g}, cosine, batch '
             f'{args.batch_size}, {args.epochs} epochs, seeds {args.seeds}, split seed '
             f'{args.data_seed}' + (' (--quick: subsampled data)' if args.quick else '') +
             f'. Train s/epoch: median epoch of a run, mean over seeds; torch threads '
             f'{torch.get_num_threads()}.')
    if not HAS_EXTENSION:
        notes += ' The involution extension was NOT built: times are the unfold fallback.'
    out = dict(config=dict(vars(args), test_fraction=DEFAULTS['test_fraction'],
                           optimizer='AdamW', schedule='cosine per step to 0',
                           variants=list(VARIANTS)),
               machine=machine, datasets=datasets_info,
               architectures={name: {v: repr(SmallNet(info['image_shape'][0],
                                                      len(info['classes']), v, **hyper))
                                         for v in VARIANTS}
                              for name, info in datasets_info.items()},
               results=results, table_markdown=table, notes=notes,
               total_time_s=total_s)
    json_path = osp.join(args.out_dir, 'results.json')
    md_path = osp.join(args.out_dir, 'results.md')
    png_path = osp.join(args.out_dir, 'accuracy_vs_params.png')
    with open(json_path, 'w') as f:
        json.dump(out, f, indent=2)
    with open(md_path, 'w') as f:
        f.write(f'# Convolution vs. involution on small datasets\n\n{table}\n\n{notes}\n\n'
                f'Command: `{out["machine"]["command"]}`\n\nMachine: {out["machine"]["cpu"]}, '
                f'{out["machine"]["platform"]}, torch {torch.__version__}, '
                f'{torch.get_num_threads()} thread(s), 1-min load average '
                f'{machine["loadavg_1min_start"]} at start, {machine["loadavg_1min_end"]} at '
                f'end, involution extension built: {machine["involution_extension"]}.\n')
    plot_results(results, png_path,
                 f'conv vs involution (K={args.kernel_size}, widths {args.widths}, '
                 f'{"swapped stem" if args.swap_stem else "conv stem"}, '
                 f'{args.epochs} epochs, {len(args.seeds)} seed(s), {", ".join(args.device)})')
    print()
    print(table)
    print()
    print(notes)
    print(f'Total {total_s:.1f} s. Wrote {json_path}, {md_path}, {png_path}')
    return out


def main(argv=None):
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
