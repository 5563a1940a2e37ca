"""Benchmark of RedNet against ResNet: backbones, Mask R-CNN and Semantic FPN, time and memory.

Scenarios (``--scenarios``; N is the batch size):

* ``infer_bsN``: backbone forward in eval mode, no grad, 224x224 (``--image-size``);
* ``infer_bsN_fused``: the same after folding every BN that follows a conv into it
  (mmcv's ``fuse_conv_bn``, applied to both networks alike);
* ``train_bsN``: backbone forward + backward + SGD step (momentum, weight decay), 224x224;
  with it, the bytes the training forward saves for backward, per image
  (``saved_for_backward_mib``, see :func:`saved_for_backward_bytes`; for
  ``train_bsN_compiled``, of the compiled backbone);
* ``infer_bsN_compiled``, ``infer_bsN_fused_compiled``, ``train_bsN_compiled``: the same with
  each backbone ``torch.compile``d (inductor, ``fullgraph=True``). The eager backbones run in
  the same rounds, interleaved with the compiled ones (``eager_time_ms``,
  ``compiled_over_eager``); the first call, which compiles, is not timed with the others
  but reported (``first_call_s``). No memory runs for these (the compiler's own memory would
  dominate);
* ``mask_rcnn_train``: one training iteration (``model.train_step``: preprocessing,
  forward, losses, backward, SGD step) of the stock mmdet Mask R-CNN R-50-FPN config and of
  ``configs/mask_rcnn_rednet50_fpn_coco.py`` on 2 images of ``--det-size`` (default 512)
  with 5 objects each;
* ``sem_fpn_train``: the same for the stock mmseg Semantic FPN R-50 Cityscapes config and
  ``configs/fpn_rednet50_cityscapes.py`` on 2 images of ``--seg-size`` (default 512x1024, the
  config's crop) with random labels of the 19 classes;
* ``mask_rcnn_train_compiled``, ``sem_fpn_train_compiled``: the same iteration with the
  model's backbone and neck compiled in place (``nn.Module.compile``, inductor,
  ``fullgraph=True``), the heads eager (the detectors' proposal sampling and target
  assignment have data-dependent shapes), timed against the eager models as the compiled
  backbone scenarios are. ``--inductor-options KEY=VALUE ...`` sets inductor's settings for
  all of them (``layout_optimization=False``: convolutions in the graphs' own layout
  instead of channels_last, whose backward is slow on some CPUs); the JSON records them.

The OpenMMLab models are built from their configs as a user's single-process run would be,
with SyncBN as BN and nothing pretrained loaded.

Backbones (``--models``): rednet26/50/101 and resnet50/101, with stage outputs 256-2048; each
RedNet is compared with the ResNet it replaces (RedNet-26 and -50 with ResNet-50, RedNet-101
with ResNet-101). The ResNets are mmdet's where mmdet imports, else torchvision's (the same
network; ``--resnet`` chooses). The methods of one scenario are timed interleaved, run by
run, in one process so that machine noise hits them alike; the table reports medians and
the ratio RedNet/ResNet. ``--device cuda`` runs on the GPU (each run synchronised) and
``--amp float16|bfloat16`` under ``torch.autocast`` (float16 training with a GradScaler).
Peak memory on CPU is measured for each (model, scenario) in a fresh process: the growth of
the resident-memory high-water mark over the process after its imports, so the parameters,
gradients, optimizer state, activations and scratch buffers all count; on CUDA it is the
growth of ``torch.cuda.max_memory_allocated`` over building the model and two iterations.
Writes JSON (machine, versions, command) and a bar plot of the ratios next to it.

    python tools/benchmark_model.py --threads 1 --out benchmarks/model_cpu_fp32_1thread.json
    python tools/benchmark_model.py --scenarios infer_bs1 train_bs8 --models rednet50 resnet50
    python tools/benchmark_model.py --device cuda --amp bfloat16 --scenarios infer_bs32 \
        train_bs32 --models rednet50 resnet50 --out work_dirs/model_cuda_bf16.json
"""
import argparse
import ast
import gc
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_op import machine_info, max_rss_bytes, proc_status_bytes, write_json  # noqa: E402

BACKBONES = {
    'rednet26': ('RedNet', 26), 'rednet50': ('RedNet', 50), 'rednet101': ('RedNet', 101),
    'resnet50': ('ResNet', 50), 'resnet101': ('ResNet', 101),
}
#: each RedNet and the ResNet it is measured against
PAIRS = {'rednet26': 'resnet50', 'rednet50': 'resnet50', 'rednet101': 'resnet101'}
#: the scenarios of whole OpenMMLab models: (registry scope, {model: config}), RedNet's model
#: first and measured against the second
MM_SCENARIOS = {
    'mask_rcnn_train': ('mmdet', {
        'mask_rcnn_rednet50': 'configs/mask_rcnn_rednet50_fpn_coco.py',
        'mask_rcnn_resnet50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'}),
    'sem_fpn_train': ('mmseg', {
        'sem_fpn_rednet50': 'configs/fpn_rednet50_cityscapes.py',
        'sem_fpn_resnet50': 'mmseg::sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py'}),
}
CITYSCAPES_CLASSES = 19
DEFAULT_SCENARIOS = ('infer_bs1', 'infer_bs8', 'infer_bs8_fused', 'train_bs8', 'mask_rcnn_train')
BACKBONE_SCENARIO = re.compile(
    r'(?P<kind>infer|train)_bs(?P<batch>[1-9][0-9]*)(?P<fused>_fused)?(?P<compiled>_compiled)?')
COMPILED_SUFFIX = '_compiled'
#: the name under which a compiled scenario's eager run of a model is timed
EAGER_SUFFIX = '_eager'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/benchmark_model_cpu.json', help='JSON file')
    parser.add_argument('--scenarios', nargs='+', type=scenario_name,
                        default=list(DEFAULT_SCENARIOS),
                        help='infer_bsN, infer_bsN_fused, train_bsN (N: batch size), '
                             f'{", ".join(MM_SCENARIOS)}, each also with the suffix _compiled')
    parser.add_argument('--models', nargs='+', choices=list(BACKBONES),
                        default=list(BACKBONES), help='backbones of the backbone scenarios')
    parser.add_argument('--repeats', type=int, default=7, help='timed runs per model')
    parser.add_argument('--image-size', type=int, default=224, help='backbone input size')
    parser.add_argument('--det-size', type=int, default=512, help='Mask R-CNN image size')
    parser.add_argument('--seg-size', type=int, nargs=2, default=[512, 1024],
                        metavar=('HEIGHT', 'WIDTH'), help='Semantic FPN image size')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--amp', choices=['float16', 'bfloat16'], default=None,
                        help='run under torch.autocast in this dtype (default: float32)')
    parser.add_argument('--resnet', choices=['mmdet', 'torchvision'], default=None,
                        help="the ResNets' implementation (default: mmdet's where it imports)")
    parser.add_argument('--channels-last', action='store_true',
                        help='models and inputs in torch.channels_last')
    parser.add_argument('--inductor-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='torch._inductor.config settings for the compiled scenarios, '
                             'e.g. layout_optimization=False (as torch.compile\'s options)')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument('--no-plot', action='store_true')
    # Internal: one memory measurement in a fresh process.
    parser.add_argument('--memory-probe', nargs=2, metavar=('MODEL', 'SCENARIO'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    args.inductor_options = _inductor_options(parser, args.inductor_options)
    if args.image_size < 32 or args.det_size < 64 or min(args.seg_size) < 64:
        parser.error('--image-size must be at least 32, --det-size and --seg-size at least 64')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be positive')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (torch.cuda.is_available() '
                     'is False)')
    mm = sorted({mm_scenario(s) for s in args.scenarios} - {None})
    if args.amp and mm and args.device != 'cuda':
        parser.error(f'--amp with {", ".join(mm)} needs --device cuda (mmengine\'s '
                     'AmpOptimWrapper is CUDA-only)')
    for task in mm:
        scope = MM_SCENARIOS[task][0]
        if not _imports(scope + '.models'):
            parser.error(f'{task} needs {scope}, which does not import here')
    if args.resnet is None:
        args.resnet = 'mmdet' if _imports('mmdet.models') else 'torchvision'
    if not _imports('mmdet.models' if args.resnet == 'mmdet' else 'torchvision'):
        parser.error(f'--resnet {args.resnet}: {args.resnet} does not import here')
    return args


def _inductor_options(parser, items):
    import torch._inductor.config as inductor_config
    options = {}
    for item in items:
        key, sep, text = item.partition('=')
        if not sep:
            parser.error(f'--inductor-options: expected KEY=VALUE, got {item!r}')
        if not hasattr(inductor_config, key):
            parser.error(f'--inductor-options: torch._inductor.config has no setting {key!r}')
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parser.error(f'--inductor-options: the value of {key} must be a Python literal '
                         f'(True, 3, \'name\'), got {text!r}')
    return options


def backbone_scenario(name):
    """(kind, batch size, fused, compiled) of a backbone scenario name, None for any other
    name."""
    match = BACKBONE_SCENARIO.fullmatch(name)
    if match is None or (match['kind'] == 'train' and match['fused']):
        return None
    return match['kind'], int(match['batch']), bool(match['fused']), bool(match['compiled'])


def is_compiled(scenario):
    return scenario.endswith(COMPILED_SUFFIX)


def mm_scenario(scenario):
    """The :data:`MM_SCENARIOS` key of ``scenario`` (eager or compiled), None for a backbone
    scenario."""
    base = scenario[:-len(COMPILED_SUFFIX)] if is_compiled(scenario) else scenario
    return base if base in MM_SCENARIOS else None


def scenario_name(text):
    if mm_scenario(text) or backbone_scenario(text) is not None:
        return text
    raise argparse.ArgumentTypeError(
        f'unknown scenario {text!r}: expected infer_bsN, infer_bsN_fused, train_bsN (N a '
        f'positive batch size) or one of {", ".join(MM_SCENARIOS)}, each optionally with the '
        'suffix _compiled')


def _imports(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet returning its four stage outputs, as mmdet's ResNet with
    out_indices=(0, 1, 2, 3) does."""

    def __init__(self, depth):
        super().__init__()
        import torchvision
        net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


def build_backbone(name, args):
    type_name, depth = BACKBONES[name]
    if type_name == 'RedNet':
        from involution_mm.models import RedNet
        model = RedNet(depth=depth, out_indices=(0, 1, 2, 3), norm_eval=False, init_cfg=None)
    elif args.resnet == 'torchvision':
        model = TorchvisionResNet(depth)
    else:
        from mmdet.models.backbones import ResNet
        # mmdet's ResNet defaults to norm_eval=True (BN frozen in eval mode while training):
        # both networks train their BNs here, as in ImageNet training
        model = ResNet(depth=depth, out_indices=(0, 1, 2, 3), norm_eval=False, init_cfg=None)
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return to_device(model, args)


def to_device(module_or_tensor, args):
    out = module_or_tensor.to(args.device)
    return out.to(memory_format=torch.channels_last) if args.channels_last else out


def build_mm_model(task, name, args):
    """Model ``name`` of :data:`MM_SCENARIOS` ``task``, built from its config with SyncBN as
    BN (one process), nothing pretrained, and Semantic FPN's preprocessor padding to
    ``--seg-size``."""
    import importlib
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings
    from involution_mm.utils.runtime import drop_pretrained, replace_sync_bn
    scope, configs = MM_SCENARIOS[task]
    path = configs[name]
    cfg = get_config(path) if '::' in path else Config.fromfile(os.path.join(REPO, path))
    drop_pretrained(cfg.model)  # nothing is downloaded
    replace_sync_bn(cfg.model)
    if scope == 'mmseg':
        cfg.model.data_preprocessor.size = tuple(args.seg_size)
    import_modules_from_strings(**cfg.get('custom_imports', dict(imports=[])))
    import involution_mm  # noqa: F401
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(cfg.model)
    model.init_weights()
    return to_device(model, args)


def mm_inputs(task, args):
    """A batch of 2 images with annotations for ``task``'s ``model.train_step``."""
    if MM_SCENARIOS[task][0] == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch_size=2, image_shapes=[(3, args.det_size, args.det_size)] * 2,
                              num_items=[5, 5], num_classes=80, with_mask=True)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    shape = tuple(args.seg_size)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=gen))
        sample = SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, CITYSCAPES_CLASSES, (1, *shape), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def amp_dtype(args):
    return getattr(torch, args.amp) if args.amp else None


def autocast(args):
    """torch.autocast in the ``--amp`` dtype; a disabled one without ``--amp``."""
    return torch.autocast(args.device, dtype=amp_dtype(args), enabled=args.amp is not None)


def training_mm_model(name, scenario, args):
    """OpenMMLab model ``name`` of ``scenario`` in training mode, seeded; in a compiled
    scenario its backbone and neck compiled in place."""
    torch.manual_seed(0)
    model = build_mm_model(mm_scenario(scenario), name, args).train()
    if is_compiled(scenario):
        model.backbone.compile(fullgraph=True)
        model.neck.compile(fullgraph=True)
    return model


def make_step(name, scenario, args):
    """A closure running one iteration of ``scenario`` on model ``name``."""
    gen = torch.Generator().manual_seed(0)
    task = mm_scenario(scenario)
    if task:
        from mmengine.optim import AmpOptimWrapper, OptimWrapper
        model = training_mm_model(name, scenario, args)
        data = mm_inputs(task, args)
        # lr small enough that repeated steps on one batch stay finite
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
        wrapper = (AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype(args)) if args.amp
                   else OptimWrapper(optimizer))
        return lambda: model.train_step(data, wrapper)

    kind, batch, fused, compiled = backbone_scenario(scenario)
    model = build_backbone(name, args)
    x = to_device(torch.randn(batch, 3, args.image_size, args.image_size, generator=gen), args)
    forward = torch.compile(model, fullgraph=True) if compiled else model
    if kind == 'train':
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                                    weight_decay=1e-4)
        scaler = torch.amp.GradScaler(args.device, enabled=args.amp == 'float16')

        def train_step():
            optimizer.zero_grad()
            with autocast(args):
                loss = sum(out.float().square().mean() for out in forward(x))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return train_step

    model.eval()
    if fused:
        from mmcv.cnn import fuse_conv_bn
        model = fuse_conv_bn(model)
        forward = torch.compile(model, fullgraph=True) if compiled else model

    def infer():
        with torch.no_grad(), autocast(args):
            forward(x)
    return infer


def scenario_models(scenario, args):
    task = mm_scenario(scenario)
    return list(MM_SCENARIOS[task][1]) if task else args.models


def synchronize(args):
    if args.device == 'cuda':
        torch.cuda.synchronize()


def scenario_methods(scenario, args):
    """{method: (model, scenario it runs)}: the scenario's models, and in a compiled scenario
    each model eager too, as ``<model>_eager``."""
    methods = {name: (name, scenario) for name in scenario_models(scenario, args)}
    if is_compiled(scenario):
        eager = scenario[:-len(COMPILED_SUFFIX)]
        methods.update({name + EAGER_SUFFIX: (name, eager) for name in list(methods)})
    return methods


def time_scenario(scenario, args):
    """(median seconds per method, seconds of each method's first call), the methods of
    :func:`scenario_methods` interleaved run by run. Two untimed calls first: the first
    compiles a compiled model and creates the optimizer state."""
    steps = {method: make_step(name, run, args)
             for method, (name, run) in scenario_methods(scenario, args).items()}
    first_call = {}
    for method, step in steps.items():
        start = time.perf_counter()
        step()
        synchronize(args)
        first_call[method] = time.perf_counter() - start
    for step in steps.values():
        step()
    synchronize(args)
    samples = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(args)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}, first_call


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


def saved_for_backward_mib(name, args, batch=2, compiled=False):
    """:func:`saved_for_backward_bytes` of backbone ``name`` in training mode (every BN on
    batch statistics), per ``--image-size`` image, in MiB; ``compiled``: of the backbone
    ``torch.compile``d as in the compiled scenarios (what its graphs save)."""
    torch.manual_seed(0)
    model = build_backbone(name, args)
    model.train()  # mmdet's ResNet.train returns None
    x = to_device(torch.randn(batch, 3, args.image_size, args.image_size), args)
    forward = torch.compile(model, fullgraph=True) if compiled else model
    with autocast(args):
        return saved_for_backward_bytes(forward, x) / batch / 2 ** 20


def memory_probe(name, scenario, args):
    """Peak resident-memory growth of building and running two iterations (the second has the
    optimizer state) over this process after its imports."""
    import involution_mm.models  # noqa: F401
    task = mm_scenario(scenario)
    if task:
        __import__(MM_SCENARIOS[task][0] + '.models')
    elif args.resnet == 'mmdet':
        import mmdet.models  # noqa: F401
    else:
        import torchvision  # noqa: F401
    before = proc_status_bytes('VmRSS')
    step = make_step(name, scenario, args)
    step()
    step()
    return max(0, max_rss_bytes() - before)


def cuda_peak_memory(name, scenario, args):
    """Growth of torch.cuda.max_memory_allocated over building the model and running two
    iterations (the second has the optimizer state), in this process."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step = make_step(name, scenario, args)
    step()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del step
    gc.collect()
    return peak


def measure_memory(name, scenario, args):
    if args.device == 'cuda':
        return cuda_peak_memory(name, scenario, args)
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-probe', name, scenario,
           '--image-size', str(args.image_size), '--det-size', str(args.det_size),
           '--seg-size', *map(str, args.seg_size), '--resnet', args.resnet]
    if args.amp:
        cmd += ['--amp', args.amp]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.channels_last:
        cmd.append('--channels-last')
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def ratios(scenario, times, memory, saved):
    task = mm_scenario(scenario)
    pairs = PAIRS
    if task:
        rednet, resnet = MM_SCENARIOS[task][1]
        pairs = {rednet: resnet}
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
    import torch._inductor.config as inductor_config
    for key, value in args.inductor_options.items():
        setattr(inductor_config, key, value)
    import involution_mm
    if not involution_mm.ops.HAS_EXTENSION:
        raise SystemExit('benchmark_model: the compiled extension is missing; build it first '
                         '(make env, or pip install -e . --no-build-isolation)')
    results = {}
    for scenario in args.scenarios:
        times, first_call = time_scenario(scenario, args)
        compiled = is_compiled(scenario)
        models = scenario_models(scenario, args)
        memory = {} if args.no_memory or compiled else {
            name: measure_memory(name, scenario, args) / 2 ** 20 for name in models}
        trains_backbone = (not mm_scenario(scenario)
                           and backbone_scenario(scenario)[0] == 'train')
        saved = {}
        if trains_backbone:
            # compiled: at the scenario's batch size, whose graphs inductor has cached by now
            how = dict(batch=backbone_scenario(scenario)[1], compiled=True) if compiled else {}
            saved = {name: saved_for_backward_mib(name, args, **how) for name in models}
        results[scenario] = {'time_ms': {k: times[k] * 1e3 for k in models},
                             'ratios': ratios(scenario, times, memory, saved)}
        if compiled:
            results[scenario].update(
                eager_time_ms={k: times[k + EAGER_SUFFIX] * 1e3 for k in models},
                compiled_over_eager={k: times[k] / times[k + EAGER_SUFFIX] for k in models},
                first_call_s={k: first_call[k] for k in models})
            print(scenario, 'compiled / eager:',
                  {k: round(v, 3) for k, v in results[scenario]['compiled_over_eager'].items()},
                  'first call (compiles):', {k: f'{first_call[k]:.0f} s' for k in models},
                  flush=True)
        if memory:
            results[scenario]['peak_memory_mib'] = memory
        if saved:
            results[scenario]['saved_for_backward_mib'] = saved
            print('saved for backward, MiB per image:',
                  {k: round(v, 1) for k, v in saved.items()}, flush=True)
        print(scenario, {k: f'{v * 1e3:.1f} ms' for k, v in times.items()}, flush=True)
    machine = machine_info(args.device)
    if any(map(is_compiled, args.scenarios)) and args.device == 'cpu':
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        # the instruction set inductor generated its C++ for (ATEN_CPU_CAPABILITY picks it)
        isa = pick_vec_isa()
        machine['inductor_vec_isa'] = str(isa) if isa else 'none (scalar C++)'
    out = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': machine, 'device': args.device,
        'amp': args.amp or 'float32', 'resnet': args.resnet, 'repeats': args.repeats,
        'channels_last': args.channels_last, 'image_size': args.image_size,
        'det_size': args.det_size, 'seg_size': args.seg_size,
        'inductor_options': args.inductor_options,
        'notes': 'time_ms: medians of interleaved runs; peak_memory_mib: ' + (
            'growth of torch.cuda.max_memory_allocated while building the model and running '
            'two iterations' if args.device == 'cuda' else
            'growth of the resident-memory high-water mark over the process after its '
            'imports, while building the model and running two iterations (a fresh process '
            'each)') + '; saved_for_backward_mib: bytes of the distinct storages a training '
            'forward saves for backward, parameters and buffers not counted, per image '
            '(batch 2); *_compiled scenarios: time_ms of the compiled backbones (of the '
            'OpenMMLab models with a compiled backbone and neck), eager_time_ms '
            'of the same backbones eager in the same rounds, first_call_s the untimed first '
            'call (compilation)',
        'results': results,
    }
    write_json(args.out, out)
    if not args.no_plot:
        plot(results, os.path.splitext(args.out)[0] + '.png')
    print(format_table(results))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
