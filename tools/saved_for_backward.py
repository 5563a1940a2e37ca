"""Bytes saved for backward per image of the backbones, eager and compiled, timing nothing.

The figure of benchmark_model's training scenarios (``saved_for_backward_mib``: the distinct
storages a training forward saves for backward, parameters and buffers left out) for each
model, batch size and mode, and the ratio of each RedNet to the ResNet it replaces. It is
deterministic, so the machine may be busy. Compiled, the figure includes what the graphs
derive from the parameters and keep (copies of conv weights in another layout): a cost per
batch, not per image, which shrinks per image as the batch grows.

    python tools/saved_for_backward.py --models rednet50 resnet50 rednet101 resnet101 \
        --batches 2 8 --out benchmarks/torch2.14/saved_for_backward.json
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_model  # noqa: E402
from benchmark_op import machine_info, write_json  # noqa: E402

MODES = ('eager', 'compiled')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/saved_for_backward.json', help='JSON file')
    parser.add_argument('--models', nargs='+', choices=list(benchmark_model.BACKBONES),
                        default=['rednet50', 'resnet50'])
    parser.add_argument('--batches', nargs='+', type=int, default=[2])
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    args = parser.parse_args(argv)
    if min(args.batches) < 1:
        parser.error('--batches must be positive')
    # benchmark_model's models at that size and thread count, and its checks of both
    args.model_args = benchmark_model.parse_args(['--image-size', str(args.image_size),
                                                  '--threads', str(args.threads)])
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine').setLevel('WARNING')  # init_weights logs every tensor
    results, ratios = {}, []
    for mode in args.modes:
        for batch in args.batches:
            saved = {}
            for name in args.models:
                saved[name] = benchmark_model.saved_for_backward_mib(
                    name, args.model_args, batch=batch, compiled=mode == 'compiled')
                torch._dynamo.reset()
                print(mode, f'batch {batch}', name, f'{saved[name]:.2f} MiB per image',
                      flush=True)
            results.setdefault(mode, {})[str(batch)] = saved
            ratios += [dict(mode=mode, batch=batch, rednet=red, resnet=res,
                            ratio=saved[red] / saved[res])
                       for red, res in benchmark_model.PAIRS.items()
                       if red in saved and res in saved]
    out = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': machine_info('cpu'), 'resnet': args.model_args.resnet,
        'image_size': args.image_size,
        'notes': 'saved_for_backward_mib per image: bytes of the distinct storages a training '
                 'forward (every BN on batch statistics) saves for backward, parameters and '
                 'buffers not counted, divided by the batch size; compiled: the backbone '
                 'torch.compiled with inductor (fullgraph=True)',
        'saved_for_backward_mib': results, 'ratios': ratios,
    }
    write_json(args.out, out)
    for row in ratios:
        print(f"{row['mode']} batch {row['batch']}: {row['rednet']}/{row['resnet']} "
              f"{row['ratio']:.3f}")
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
