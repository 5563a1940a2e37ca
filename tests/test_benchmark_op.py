"""tools/benchmark_op.py: a tiny run writes the JSON the README quotes; bad arguments fail."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'benchmark_op.py')


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_tiny_run_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    result = run_tool('--shapes', '32:8', '--batch-sizes', '2', '--repeats', '2', '--threads', '1',
                      '--block-ms', '2', '--out', str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data['command'].endswith(f'--out {out}') and data['device'] == 'cpu'
    assert data['block_ms'] == 2
    assert data['machine']['kernel_isa'] in ('default', 'avx2', 'avx512')
    (row,) = data['results']
    assert (row['batch'], row['channels'], row['size']) == (2, 32, 8)
    for key in ('forward_ms', 'forward_backward_ms'):
        assert set(row[key]) == {'involution_mm', 'unfold_reference', 'depthwise_conv'}
        assert all(v > 0 for v in row[key].values())
    # unfold materialises K*K = 49 times the input; the op nothing that grows with it
    assert row['extra_peak_mib']['unfold_reference'] >= 0
    assert row['achieved_gbps'] > 0 and data['copy_bandwidth_gbps'] > 0


@pytest.mark.parametrize('args,message', [
    (['--shapes', '63:8'], 'C must be a positive multiple of 16'),
    (['--shapes', 'wide'], 'C:H pairs'),
    (['--repeats', '0'], '--repeats must be at least 1'),
    (['--batch-sizes', '0'], '--batch-sizes must be positive'),
    (['--block-ms', '0'], '--block-ms must be positive'),
])
def test_bad_arguments(args, message):
    result = run_tool(*args)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without CUDA')
def test_cuda_mode_without_a_gpu_says_so():
    result = run_tool('--device', 'cuda')
    assert result.returncode == 2 and 'no CUDA device is available' in result.stderr
