"""One page on a tools/gpu_check/run.sh run: every stage, test results per dtype, and the op
and model benchmark figures. Reads OUT_DIR, writes OUT_DIR/summary.md and summary.json.

    python tools/gpu_check/summarize.py OUT_DIR
"""
import argparse
import csv
import glob
import json
import os
import re
import xml.etree.ElementTree as ET

DTYPE = re.compile(r'(?<![a-z])(bfloat16|float16|float32|float64)')


def read_stages(out):
    with open(os.path.join(out, 'stages.tsv'), newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_outcomes(path):
    """{dtype or 'other': {'passed': n, 'failed': n, 'skipped': n}} from a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {}
    for case in root.iter('testcase'):
        match = DTYPE.search(case.get('name', ''))
        group = counts.setdefault(match.group(1) if match else 'other',
                                  {'passed': 0, 'failed': 0, 'skipped': 0})
        if case.find('failure') is not None or case.find('error') is not None:
            group['failed'] += 1
        elif case.find('skipped') is not None:
            group['skipped'] += 1
        else:
            group['passed'] += 1
    return counts


def op_rows(data):
    bandwidth = data['copy_bandwidth_gbps']
    rows = []
    for r in data['results']:
        rows.append({
            'dtype': data['dtype'], 'batch': r['batch'], 'channels': r['channels'],
            'size': r['size'], 'forward_ms': r['forward_ms']['involution_mm'],
            'forward_backward_ms': r['forward_backward_ms']['involution_mm'],
            'speedup_vs_unfold_forward': r['speedup_vs_unfold_forward'],
            'speedup_vs_unfold_forward_backward': r['speedup_vs_unfold_forward_backward'],
            'ratio_to_dwconv_forward': r['ratio_to_dwconv_forward'],
            'ratio_to_dwconv_forward_backward': r['ratio_to_dwconv_forward_backward'],
            'achieved_gbps': r['achieved_gbps'],
            'fraction_of_copy_bandwidth': r['achieved_gbps'] / bandwidth,
        })
    return rows


def model_rows(data):
    rows = []
    for scenario, res in data['results'].items():
        memory = res.get('peak_memory_mib', {})
        for pair in res['ratios']:
            red, rsn = pair['rednet'], pair['resnet']
            rows.append({
                'precision': data['amp'], 'scenario': scenario, 'rednet': red, 'resnet': rsn,
                'rednet_ms': res['time_ms'][red], 'resnet_ms': res['time_ms'][rsn],
                'time_ratio': pair['time_ratio'], 'rednet_peak_mib': memory.get(red),
                'resnet_peak_mib': memory.get(rsn), 'memory_ratio': pair.get('memory_ratio'),
                'saved_for_backward_ratio': pair.get('saved_for_backward_ratio'),
            })
    return rows


def fmt(value, spec):
    return '-' if value is None else format(value, spec)


def render(summary):
    env = summary['environment'] or {}
    lines = ['# GPU check', '',
             f"Machine: {env.get('gpu', 'no GPU')} (capability {env.get('capability', '-')}, "
             f"{fmt(env.get('gpu_memory_gib'), '.0f')} GiB), driver/nvidia-smi: "
             f"{env.get('nvidia-smi', '-')}; {env.get('cpu', '?')}, {env.get('cpu_cores', '?')} "
             f"cores; Python {env.get('python', '?')}, torch {env.get('torch', '?')} "
             f"(CUDA {env.get('torch_cuda')}), nvcc: {env.get('nvcc', '-')}", '',
             '| stage | status | seconds | budget | detail |', '|---|---|---|---|---|']
    for s in summary['stages']:
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['budget']} | "
                     f"{s['detail']} |")
    tests = summary['op_tests']
    if tests:
        lines += ['', '## Op tests by dtype', '', '| dtype | passed | failed | skipped |',
                  '|---|---|---|---|']
        for dtype, c in sorted(tests.items()):
            lines.append(f"| {dtype} | {c['passed']} | {c['failed']} | {c['skipped']} |")
    if summary['op_benchmark']:
        lines += ['', '## Op (K=7, 16 channels per group)', '',
                  '| dtype | B | C | HxW | fwd ms | fwd+bwd ms | unfold/op fwd | unfold/op '
                  'fwd+bwd | op/dwconv fwd | op/dwconv fwd+bwd | GB/s | of copy bw |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for r in summary['op_benchmark']:
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['channels']} | {r['size']}x{r['size']} | "
                f"{r['forward_ms']:.3f} | {r['forward_backward_ms']:.3f} | "
                f"{r['speedup_vs_unfold_forward']:.1f}x | "
                f"{r['speedup_vs_unfold_forward_backward']:.1f}x | "
                f"{r['ratio_to_dwconv_forward']:.2f} | {r['ratio_to_dwconv_forward_backward']:.2f} | "
                f"{r['achieved_gbps']:.0f} | {r['fraction_of_copy_bandwidth']:.0%} |")
        bandwidths = ', '.join(f"{k} {v:.0f} GB/s" for k, v in summary['copy_bandwidth_gbps'].items())
        lines += ['', f'Copy bandwidth measured in the same runs: {bandwidths}.']
    if summary['model_benchmark']:
        lines += ['', '## RedNet-50 / ResNet-50 (224x224)', '',
                  '| precision | scenario | RedNet ms | ResNet ms | time ratio | RedNet peak MiB | '
                  'ResNet peak MiB | memory ratio | saved-for-backward ratio |',
                  '|---|---|---|---|---|---|---|---|---|']
        for r in summary['model_benchmark']:
            lines.append(
                f"| {r['precision']} | {r['scenario']} | {r['rednet_ms']:.1f} | "
                f"{r['resnet_ms']:.1f} | {r['time_ratio']:.2f} | "
                f"{fmt(r['rednet_peak_mib'], '.0f')} | {fmt(r['resnet_peak_mib'], '.0f')} | "
                f"{fmt(r['memory_ratio'], '.2f')} | {fmt(r['saved_for_backward_ratio'], '.2f')} |")
    return '\n'.join(lines) + '\n'


def summarize(out):
    op_files = sorted(glob.glob(os.path.join(out, 'op_cuda_*.json')))
    model_files = sorted(glob.glob(os.path.join(out, 'model_cuda_*.json')))
    op_data = [d for d in map(read_json, op_files) if d]
    summary = {
        'stages': read_stages(out),
        'environment': read_json(os.path.join(out, 'environment.json')),
        'op_tests': test_outcomes(os.path.join(out, 'op_tests.xml')),
        'op_benchmark': [row for d in op_data for row in op_rows(d)],
        'copy_bandwidth_gbps': {d['dtype']: d['copy_bandwidth_gbps'] for d in op_data},
        'model_benchmark': [row for d in map(read_json, model_files) if d
                            for row in model_rows(d)],
    }
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(render(summary))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', help='the OUT_DIR of tools/gpu_check/run.sh')
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.out, 'stages.tsv')):
        parser.error(f'{args.out} holds no stages.tsv: not the output of tools/gpu_check/run.sh')
    summarize(args.out)
    print(f"wrote {os.path.join(args.out, 'summary.md')}")


if __name__ == '__main__':
    main()
