"""tools/benchmark_op.py: a tiny run writes the JSON the README quotes; bad arguments fail."""
import json
import re

import pytest
import torch

TOOL = 'tools/benchmark_op.py'


def test_tiny_run_writes_json(tmp_path, tools):
    out = tmp_path / 'bench.json'
    result = tools.run_tool([TOOL, '--shapes', '32:8', '--batch-sizes', '2', '--repeats', '2',
                             '--threads', '1', '--block-ms', '2', '--out', str(out)],
                            MALLOC_TRIM_THRESHOLD_='1073741824')
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    assert data['command'].endswith(f'--out {out}') and data['device'] == 'cpu'
    assert data['block_ms'] == 2
    assert data['machine']['kernel_isa'] in ('default', 'avx2', 'avx512')
    assert data['machine']['environment']['MALLOC_TRIM_THRESHOLD_'] == '1073741824'
    with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()

    def first(field):
        return re.search(rf'^{field}\s*:\s*(.*)$', cpuinfo, re.M).group(1).strip()
    machine = data['machine']
    assert (machine['cpu_family'], machine['cpu_model']) == (first('cpu family'), first('model'))
    assert ('avx2' in machine['simd']) == ('avx2' in first('flags').split())
    (row,) = data['results']
    assert (row['batch'], row['channels'], row['size']) == (2, 32, 8)
    for key in ('forward_ms', 'forward_backward_ms'):
        assert set(row[key]) == {'involution_mm', 'unfold_reference', 'depthwise_conv'}
        assert all(v > 0 for v in row[key].values())
    for key in ('forward_page_faults_per_call', 'forward_backward_page_faults_per_call'):
        assert set(row[key]) == {'involution_mm', 'unfold_reference', 'depthwise_conv'}
        assert all(v >= 0 for v in row[key].values())
    # unfold materialises K*K = 49 times the input; the op nothing that grows with it
    assert row['extra_peak_mib']['unfold_reference'] >= 0
    assert row['achieved_gbps'] > 0 and data['copy_bandwidth_gbps'] > 0
    assert row['fraction_of_same_bytes_copy'] > 0


@pytest.mark.parametrize('args,message', [
    (['--shapes', '63:8'], 'C must be a positive multiple of 16'),
    (['--shapes', 'wide'], 'C:H pairs'),
    (['--repeats', '0'], '--repeats must be at least 1'),
    (['--batch-sizes', '0'], '--batch-sizes must be positive'),
    (['--block-ms', '0'], '--block-ms must be positive'),
])
def test_bad_arguments(args, message, tools):
    result = tools.run_tool([TOOL, *args])
    assert result.returncode == 2 and message in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without CUDA')
def test_cuda_mode_without_a_gpu_says_so(tools):
    result = tools.run_tool([TOOL, '--device', 'cuda'])
    assert result.returncode == 2 and 'no CUDA device is available' in result.stdout
