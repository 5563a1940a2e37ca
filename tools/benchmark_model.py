"""Benchmark of RedNet against mmdet's ResNet: backbones and Mask R-CNN, time and memory.

Scenarios (``--scenarios``):

* ``infer_bs1`` / ``infer_bs8``: backbone forward in eval mode, no grad, 224x224
  (``--image-size``);
* ``infer_bs8_fused``: the same after folding every BN that follows a conv into it
  (mmcv's ``fuse_conv_bn``, applied to both networks alike);
* ``train_bs8``: backbone forward + backward + SGD step (momentum, weight decay), 224x224;
  with it, the bytes the training forward saves for backward, per image
  (``saved_for_backward_mib``, see :func:`saved_for_backward_bytes`);
* ``mask_rcnn_train``: one training iteration (``model.train_step``: preprocessing,
  forward, losses, backward, SGD step) of the stock mmdet Mask R-CNN R-50-FPN config and of
  ``configs/mask_rcnn_rednet50_fpn_coco.py`` on 2 images of ``--det-size`` (default 512)
  with 5 objects each.

Backbones (``--models``): rednet26/50/101 and resnet50/101, with stage outputs 256-2048; each
RedNet is compared with the ResNet it replaces (RedNet-26 and -50 with ResNet-50, RedNet-101
with ResNet-101). The methods of one scenario are timed interleaved, run by run, in one
process so that machine noise hits them alike; the table reports medians and the ratio
RedNet/ResNet. Peak memory is measured for each (model, scenario) in a fresh process: the
growth of the resident-memory high-water mark over the process after its imports, so the
parameters, gradients, optimizer state, activations and scratch buffers all count. Writes
JSON (machine, versions, command) and a bar plot of the ratios next to it.

    python tools/benchmark_model.py --threads 1 --out benchmarks/model_cpu_fp32_1thread.json
    python tools/benchmark_model.py --scenarios infer_bs1 train_bs8 --models rednet50 resnet50
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_op import machine_info, max_rss_bytes, proc_status_bytes, write_json  # noqa: E402

BACKBONES = {
    'rednet26': ('RedNet', 26), 'rednet50': ('RedNet', 50), 'rednet101': ('RedNet', 101),
    'resnet50': ('ResNet', 50), 'resnet101': ('ResNet', 101),
}
#: each RedNet and the ResNet it is measured against
PAIRS = {'rednet26': 'resnet50', 'rednet50': 'resnet50', 'rednet101': 'resnet101'}
DETECTORS = {
    'mask_rcnn_rednet50': 'configs/mask_rcnn_rednet50_fpn_coco.py',
    'mask_rcnn_resnet50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
}
DET_PAIRS = {'mask_rcnn_rednet50': 'mask_rcnn_resnet50'}
BACKBONE_SCENARIOS = ('infer_bs1', 'infer_bs8', 'infer_bs8_fused', 'train_bs8')
SCENARIOS = BACKBONE_SCENARIOS + ('mask_rcnn_train', )
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/benchmark_model_cpu.json', help='JSON file')
    parser.add_argument('--scenarios', nargs='+', choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument('--models', nargs='+', choices=list(BACKBONES),
                        default=list(BACKBONES), help='backbones of the backbone scenarios')
    parser.add_argument('--repeats', type=int, default=7, help='timed runs per model')
    parser.add_argument('--image-size', type=int, default=224, help='backbone input size')
    parser.add_argument('--det-size', type=int, default=512, help='Mask R-CNN image size')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--channels-last', action='store_true',
                        help='models and inputs in torch.channels_last')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument('--no-plot', action='store_true')
    # Internal: one memory measurement in a fresh process.
    parser.add_argument('--memory-probe', nargs=2, metavar=('MODEL', 'SCENARIO'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    if args.image_size < 32 or args.det_size < 64:
        parser.error('--image-size must be at least 32 and --det-size at least 64')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be positive')
    return args


def build_backbone(name, channels_last):
    import involution_mm  # noqa: F401  (registers RedNet)
    from mmdet.registry import MODELS
    type_name, depth = BACKBONES[name]
    scope = 'involution_mm' if type_name == 'RedNet' else 'mmdet'
    # mmdet's ResNet defaults to norm_eval=True (BN frozen in eval mode while training):
    # both networks train their BNs here, as in ImageNet training
    model = MODELS.build(dict(type=f'{scope}.{type_name}', depth=depth,
                              out_indices=(0, 1, 2, 3), norm_eval=False, init_cfg=None))
    model.init_weights()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_detector(name, channels_last):
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings
    from mmdet.registry import MODELS
    path = DETECTORS[name]
    cfg = get_config(path) if path.startswith('mmdet::') else Config.fromfile(
        os.path.join(REPO, path))
    cfg.model.backbone.init_cfg = None  # nothing is downloaded
    import_modules_from_strings(**cfg.get('custom_imports', dict(imports=[])))
    import involution_mm  # noqa: F401
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(name, scenario, args):
    """A closure running one iteration of ``scenario`` on model ``name``."""
    gen = torch.Generator().manual_seed(0)
    if scenario == 'mask_rcnn_train':
        from mmdet.testing import demo_mm_inputs
        from mmengine.optim import OptimWrapper
        torch.manual_seed(0)
        model = build_detector(name, args.channels_last).train()
        data = demo_mm_inputs(batch_size=2, image_shapes=[(3, args.det_size, args.det_size)] * 2,
                              num_items=[5, 5], num_classes=80, with_mask=True)
        # lr small enough that repeated steps on one batch stay finite
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9,
                                               weight_decay=1e-4))
        return lambda: model.train_step(data, wrapper)

    model = build_backbone(name, args.channels_last)
    batch = 1 if scenario == 'infer_bs1' else 8
    x = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if scenario == 'train_bs8':
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                    weight_decay=1e-4)

        def train_step():
            optimizer.zero_grad()
            loss = sum(out.float().square().mean() for out in model(x))
            loss.backward()
            optimizer.step()
        return train_step

    model.eval()
    if scenario == 'infer_bs8_fused':
        from mmcv.cnn import fuse_conv_bn
        model = fuse_conv_bn(model)

    def infer():
        with torch.no_grad():
            model(x)
    return infer


def scenario_models(scenario, args):
    if scenario == 'mask_rcnn_train':
        return list(DETECTORS)
    return args.models


def time_scenario(scenario, args):
    """Median seconds per model, models interleaved run by run."""
    steps = {name: make_step(name, scenario, args) for name in scenario_models(scenario, args)}
    for step in steps.values():  # warm-up (and optimizer state)
        step()
    samples = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def saved_for_backward_bytes(model, x):
    """Bytes of the distinct storages that one training forward of ``model`` on ``x`` saves
    for backward (``torch.autograd.graph.saved_tensors_hooks``), not counting the model's
    parameters and buffers: what a device holds between forward and backward for the batch.
    Views of one storage count once. Deterministic, unlike resident-memory peaks."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(storages.values())


def saved_for_backward_mib(name, args, batch=2):
    """:func:`saved_for_backward_bytes` of backbone ``name`` in training mode (every BN on
    batch statistics), per ``--image-size`` image, in MiB."""
    torch.manual_seed(0)
    model = build_backbone(name, args.channels_last)
    model.train()  # mmdet's ResNet.train returns None
    x = torch.randn(batch, 3, args.image_size, args.image_size)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return saved_for_backward_bytes(model, x) / batch / 2 ** 20


def memory_probe(name, scenario, args):
    """Peak resident-memory growth of building and running two iterations (the second has the
    optimizer state) over this process after its imports."""
    import involution_mm  # noqa: F401
    import mmdet.models  # noqa: F401
    before = proc_status_bytes('VmRSS')
    step = make_step(name, scenario, args)
    step()
    step()
    return max(0, max_rss_bytes() - before)


def measure_memory(name, scenario, args):
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-probe', name, scenario,
           '--image-size', str(args.image_size), '--det-size', str(args.det_size)]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def ratios(scenario, times, memory, saved):
    pairs = DET_PAIRS if scenario == 'mask_rcnn_train' else PAIRS
    rows = []
    for red, res in pairs.items():
        if red in times and res in times:
            row = {'rednet': red, 'resnet': res, 'time_ratio': times[red] / times[res]}
            if red in memory and res in memory:
                row['memory_ratio'] = memory[red] / memory[res]
            if red in saved and res in saved:
                row['saved_for_backward_ratio'] = saved[red] / saved[res]
            rows.append(row)
    return rows


def format_table(results):
    lines = ['| scenario | RedNet | ResNet | RedNet ms | ResNet ms | time ratio | '
             'RedNet peak MiB | ResNet peak MiB | memory ratio |',
             '|---|---|---|---|---|---|---|---|---|']
    for scenario, res in results.items():
        t, m = res['time_ms'], res.get('peak_memory_mib', {})
        for row in res['ratios']:
            red, rsn = row['rednet'], row['resnet']
            lines.append(
                f"| {scenario} | {red} | {rsn} | {t[red]:.1f} | {t[rsn]:.1f} | "
                f"{row['time_ratio']:.2f} | {m.get(red, float('nan')):.0f} | "
                f"{m.get(rsn, float('nan')):.0f} | {row.get('memory_ratio', float('nan')):.2f} |")
    return '\n'.join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels, time_r, mem_r = [], [], []
    for scenario, res in results.items():
        for row in res['ratios']:
            labels.append(f"{scenario}\n{row['rednet']}/{row['resnet']}")
            time_r.append(row['time_ratio'])
            mem_r.append(row.get('memory_ratio', float('nan')))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    pos = range(len(labels))
    ax.bar([p - 0.2 for p in pos], time_r, 0.4, label='time')
    ax.bar([p + 0.2 for p in pos], mem_r, 0.4, label='peak memory')
    ax.axhline(1.0, color='k', lw=0.8)
    ax.set_xticks(list(pos), labels, fontsize=7)
    ax.set_ylabel('RedNet / ResNet')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine').setLevel('WARNING')  # init_weights logs every tensor
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        name, scenario = args.memory_probe
        print(memory_probe(name, scenario, args))
        return
    import involution_mm
    if not involution_mm.ops.HAS_EXTENSION:
        raise SystemExit('benchmark_model: the compiled extension is missing; build it first '
                         '(make env, or pip install -e . --no-build-isolation)')
    results = {}
    for scenario in args.scenarios:
        times = time_scenario(scenario, args)
        memory = {} if args.no_memory else {
            name: measure_memory(name, scenario, args) / 2 ** 20
            for name in scenario_models(scenario, args)}
        saved = {name: saved_for_backward_mib(name, args) for name in times
                 } if scenario == 'train_bs8' else {}
        results[scenario] = {'time_ms': {k: v * 1e3 for k, v in times.items()},
                             'ratios': ratios(scenario, times, memory, saved)}
        if memory:
            results[scenario]['peak_memory_mib'] = memory
        if saved:
            results[scenario]['saved_for_backward_mib'] = saved
            print('saved for backward, MiB per image:',
                  {k: round(v, 1) for k, v in saved.items()}, flush=True)
        print(scenario, {k: f'{v * 1e3:.1f} ms' for k, v in times.items()}, flush=True)
    out = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': machine_info('cpu'), 'repeats': args.repeats,
        'channels_last': args.channels_last, 'image_size': args.image_size,
        'det_size': args.det_size,
        'notes': 'time_ms: medians of interleaved runs; peak_memory_mib: growth of the '
                 'resident-memory high-water mark over the process after its imports, while '
                 'building the model and running two iterations (a fresh process each); '
                 'saved_for_backward_mib: bytes of the distinct storages a training forward '
                 'saves for backward, parameters and buffers not counted, per image (batch 2)',
        'results': results,
    }
    write_json(args.out, out)
    if not args.no_plot:
        plot(results, os.path.splitext(args.out)[0] + '.png')
    print(format_table(results))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
