#!/usr/bin/env python
"""Export the model of a config to ONNX (standard operators, opset 18) and check it.

What is exported for each model family: see :mod:`involution_mm.deploy` (segmentors and
one-stage detectors whole in 'tensor' mode, two-stage detectors up to the RPN head outputs,
classifiers where mmpretrain builds, ``--part backbone`` the bare backbone of any config).
The input is the normalised image (the data preprocessor stays outside).

Examples:
  python tools/deployment/export_onnx.py configs/fpn_rednet50_cityscapes.py \\
      --out fpn.onnx --shape 512 1024 --dynamic --check
  python tools/deployment/export_onnx.py configs/retinanet_rednet50_fpn_coco.py CKPT.pth \\
      --out retina.onnx --shape 800 1344 --check
  python tools/deployment/export_onnx.py configs/rednet50_64xb32_in1k.py --part backbone \\
      --out rednet50.onnx --shape 224 224 --batch 8 --dynamic --check

``--check`` runs the file in onnxruntime (CPU) and, where it imports, OpenVINO (CPU, f32)
on a random input (or ``--image``), prints the largest absolute difference from PyTorch and
that difference over the largest output magnitude, and exits with status 1 when the latter
exceeds the fp32 tolerance (``--rtol``, default 1e-4).
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from involution_mm import deploy  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Export a config\'s model to ONNX')
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='weights to export (default: random weights)')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                   help='input height and width of the example (and of the check)')
    p.add_argument('--batch', type=int, default=1, help='batch of the example')
    p.add_argument('--dynamic', action='store_true',
                   help='batch, height and width symbolic (height and width stay fixed '
                   'where the model needs them, e.g. UPerNet\'s pyramid pooling)')
    p.add_argument('--part', choices=deploy.PARTS, default='auto',
                   help='auto: what mmdeploy exports for the family; full: the whole '
                   'network (not for two-stage detectors); backbone: the bare backbone')
    p.add_argument('--check', action='store_true',
                   help='compare onnxruntime (and OpenVINO) with PyTorch')
    p.add_argument('--image', default=None,
                   help='image for --check (resized to --shape and normalised with the '
                   'config\'s data preprocessor); default: random input')
    p.add_argument('--rtol', type=float, default=deploy.FP32_REL_TOLERANCE,
                   help='largest accepted |difference| / max |PyTorch output|')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of the config, xxx=yyy')
    return p.parse_args(argv)


def load_image(path, cfg, shape, batch):
    import mmcv
    if not osp.isfile(path):
        raise deploy.ExportError(f'image file not found: {path}')
    img = mmcv.imresize(mmcv.imread(path), (shape[1], shape[0])).astype(np.float32)
    pre = cfg.model.get('data_preprocessor', None) or {}
    if pre.get('bgr_to_rgb') or pre.get('to_rgb'):
        img = img[..., ::-1]
    mean = np.array(pre.get('mean', [0, 0, 0]), np.float32)
    std = np.array(pre.get('std', [1, 1, 1]), np.float32)
    img = ((img - mean) / std).transpose(2, 0, 1)
    return np.ascontiguousarray(np.repeat(img[None], batch, 0))


def runtimes():
    yield 'onnxruntime', deploy.run_onnxruntime
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        print(f'OpenVINO: not checked ({err})')
        return
    yield 'OpenVINO', deploy.run_openvino


def main(argv=None):
    args = parse_args(argv)
    try:
        deploy.check_shape(tuple(args.shape), args.batch)
        cfg = deploy.load_config(args.config, args.cfg_options)
        torch.manual_seed(deploy.EXPORT_SEED)
        module, description, names = deploy.build_exportable(cfg, args.checkpoint, args.part)
        example = torch.randn(args.batch, 3, *args.shape)
        start = time.perf_counter()
        model = deploy.export_onnx(module, example, args.out, names, args.dynamic)
    except deploy.ExportError as err:
        raise SystemExit(f'export_onnx: {err}')
    print(f'exported {description} to {args.out} in {time.perf_counter() - start:.1f} s: '
          f'opset {deploy.ONNX_OPSET}, input {deploy.input_dims(model)}, '
          f'{len(model.graph.output)} outputs ({", ".join(o.name for o in model.graph.output)})')
    foreign = deploy.nonstandard_nodes(model)
    if foreign:
        raise SystemExit(f'export_onnx: the graph has non-standard nodes: {foreign}')
    if not args.check:
        return 0
    x = (load_image(args.image, cfg, args.shape, args.batch) if args.image
         else np.random.default_rng(0).standard_normal(example.shape, np.float32))
    reference = deploy.torch_outputs(module, x)
    failed = []
    for name, run in runtimes():
        abs_diff, rel_diff = deploy.compare(reference, run(args.out, x))
        verdict = 'ok' if rel_diff <= args.rtol else f'FAILED (> {args.rtol:g})'
        print(f'{name}: max abs diff {abs_diff:.3e}, max rel diff {rel_diff:.3e}: {verdict}')
        if rel_diff > args.rtol:
            failed.append(name)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
