#!/usr/bin/env python
"""PyTorch eager against onnxruntime and OpenVINO (CPU, fp32) for exported models.

Scenarios: RedNet-50 and ResNet-50 backbones (mmdet's ResNet; both exported by the same
path, :func:`involution_mm.deploy.export_onnx`, with a dynamic batch) at batch 1 and 8,
224x224, and the whole Semantic FPN RedNet-50 (``configs/fpn_rednet50_cityscapes.py``) at
1x3x512x1024. Every runner of a scenario is timed once per round, the runners interleaved
in one process, so the ratios compare calls made side by side; times are medians over
rounds and each ratio is the median of the per-round ratios. The JSON records the machine,
the versions and the command.

  python tools/benchmark_deploy.py --threads 1 --out benchmarks/deploy_cpu_fp32_1thread.json
"""
import argparse
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from involution_mm import deploy  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCENARIOS = ('backbone_bs1', 'backbone_bs8', 'fpn_512x1024')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--scenarios', nargs='+', choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument('--out', default='work_dirs/benchmark_deploy.json')
    return p.parse_args(argv)


def machine():
    info = {'platform': platform.platform(), 'cpu_count': os.cpu_count()}
    try:
        for line in subprocess.run(['lscpu'], capture_output=True, text=True).stdout.splitlines():
            if line.startswith('Model name:'):
                info['cpu_model'] = line.split(':', 1)[1].strip()
    except OSError:
        pass
    info['torch_cpu_capability'] = torch.backends.cpu.get_cpu_capability()
    info['involution_kernel_isa'] = torch.ops.involution_mm.cpu_kernel_isa()
    return info


def versions():
    out = {'torch': torch.__version__}
    for name in ('onnx', 'onnxruntime', 'onnxscript', 'openvino', 'mmdet', 'mmseg'):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def backbones():
    from mmdet.models.backbones import ResNet

    from involution_mm.registry import MODELS
    rednet = MODELS.build(dict(type='RedNet', depth=50, stem_kernel_size=3, out_indices=(3,)))
    resnet = ResNet(depth=50, out_indices=(3,))
    return {'RedNet-50': deploy.Backbone(rednet).eval(),
            'ResNet-50': deploy.Backbone(resnet).eval()}


def runners(name, module, path, x, threads):
    """(label, callable) for PyTorch eager, onnxruntime and OpenVINO on input ``x``."""
    session = deploy.ort_session(path, threads)
    feed = {session.get_inputs()[0].name: x}
    request = deploy.openvino_model(path, threads).create_infer_request()
    tensor = torch.from_numpy(x)

    def eager():
        with torch.inference_mode():
            module(tensor)

    return [(f'{name} eager', eager), (f'{name} onnxruntime', lambda: session.run(None, feed)),
            (f'{name} openvino', lambda: request.infer([x]))]


def time_interleaved(entries, rounds):
    for _, fn in entries:  # warm-up: allocations, OpenVINO's and onnxruntime's first call
        fn()
    times = {label: [] for label, _ in entries}
    for _ in range(rounds):
        for label, fn in entries:
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return times


def ratios(times, pairs):
    out = {}
    for num, den in pairs:
        per_round = [a / b for a, b in zip(times[num], times[den])]
        out[f'{num} / {den}'] = float(np.median(per_round))
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {'command': ' '.join([osp.relpath(sys.argv[0], ROOT)] + (argv or sys.argv[1:])),
              'machine': machine(), 'versions': versions(), 'threads': args.threads,
              'rounds': args.rounds, 'dtype': 'float32', 'scenarios': {}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        if any(s.startswith('backbone') for s in args.scenarios):
            models = backbones()
            paths = {}
            for name, module in models.items():
                paths[name] = osp.join(tmp, name + '.onnx')
                deploy.export_onnx(module, torch.randn(1, 3, 224, 224), paths[name],
                                   dynamic=True)
            for scenario in [s for s in args.scenarios if s.startswith('backbone')]:
                batch = int(scenario.rsplit('bs', 1)[1])
                x = rng.standard_normal((batch, 3, 224, 224), np.float32)
                entries = [e for name, m in models.items()
                           for e in runners(name, m, paths[name], x, args.threads)]
                times = time_interleaved(entries, args.rounds)
                pairs = [('RedNet-50 onnxruntime', 'RedNet-50 eager'),
                         ('RedNet-50 openvino', 'RedNet-50 eager'),
                         ('RedNet-50 onnxruntime', 'ResNet-50 onnxruntime'),
                         ('RedNet-50 openvino', 'ResNet-50 openvino'),
                         ('RedNet-50 eager', 'ResNet-50 eager'),
                         ('ResNet-50 onnxruntime', 'ResNet-50 eager')]
                result['scenarios'][scenario] = _summary(times, pairs, x.shape)
                print(scenario, json.dumps(result['scenarios'][scenario]['ratios'], indent=1),
                      flush=True)
        if 'fpn_512x1024' in args.scenarios:
            cfg = deploy.load_config(osp.join(ROOT, 'configs', 'fpn_rednet50_cityscapes.py'))
            module, _, names = deploy.build_exportable(cfg)
            path = osp.join(tmp, 'fpn.onnx')
            deploy.export_onnx(module, torch.randn(1, 3, 512, 1024), path, names)
            x = rng.standard_normal((1, 3, 512, 1024), np.float32)
            times = time_interleaved(runners('Semantic FPN RedNet-50', module, path, x,
                                             args.threads), args.rounds)
            pairs = [('Semantic FPN RedNet-50 onnxruntime', 'Semantic FPN RedNet-50 eager'),
                     ('Semantic FPN RedNet-50 openvino', 'Semantic FPN RedNet-50 eager')]
            result['scenarios']['fpn_512x1024'] = _summary(times, pairs, x.shape)
            print('fpn_512x1024', json.dumps(result['scenarios']['fpn_512x1024']['ratios'],
                                             indent=1), flush=True)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {args.out}')


def _summary(times, pairs, shape):
    return {'input_shape': list(shape),
            'median_ms': {k: float(np.median(v)) * 1e3 for k, v in times.items()},
            'ms': {k: [t * 1e3 for t in v] for k, v in times.items()},
            'ratios': ratios(times, pairs)}


if __name__ == '__main__':
    main()
