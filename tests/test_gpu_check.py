"""tools/gpu_check: the one-command GPU check, run here without a GPU, in a fresh virtual
environment that holds torch, pytest and ninja only (what a bare GPU image has, less its
CUDA): every stage it can run must pass, every GPU stage must be skipped with its reason.
That run also proves that the op layer and its tests need torch alone."""
import csv
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RUN = osp.join(ROOT, 'tools', 'gpu_check', 'run.sh')
PREPARE = osp.join(ROOT, 'tools', 'gpu_check', 'prepare.sh')
SUMMARIZE = osp.join(ROOT, 'tools', 'gpu_check', 'summarize.py')
GPU_STAGES = ('benchmark_op_float32', 'benchmark_op_float16', 'benchmark_op_bfloat16',
              'benchmark_model_float32', 'benchmark_model_amp')
RUNNABLE_STAGES = ('environment', 'wheels', 'build', 'op_tests', 'summary')


def _run(cmd, timeout, **env):
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def torch_only_python(tmp_path_factory):
    """The python of a new venv with this torch, pytest and ninja, and nothing of OpenMMLab."""
    venv = tmp_path_factory.mktemp('torch_only') / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
    python = str(venv / 'bin' / 'python')
    version = torch.__version__.split('+')[0]
    result = _run([python, '-m', 'pip', 'install', '--quiet', f'torch=={version}', 'pytest',
                   'ninja'], timeout=1200)
    assert result.returncode == 0, f'cannot make the torch-only venv:\n{result.stdout}'
    return python


def _stages(out):
    with open(osp.join(out, 'stages.tsv'), newline='') as f:
        return {row['stage']: row for row in csv.DictReader(f, delimiter='\t')}


@pytest.mark.slow
@pytest.mark.timeout(2700)  # a venv, a serial 2-core build of the extension and the op tests
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='on a GPU machine run tools/gpu_check/run.sh itself')
def test_check_runs_every_cpu_stage_and_skips_the_gpu_ones(torch_only_python, tmp_path):
    wheels = tmp_path / 'wheels'
    prepared = _run(['bash', PREPARE, str(wheels)], timeout=600)
    assert prepared.returncode == 0, prepared.stdout
    assert len(list(wheels.glob('*.whl'))) == 6

    out = tmp_path / 'out'
    result = _run(['bash', RUN, str(out)], timeout=2400, PYTHON=torch_only_python,
                  GPU_CHECK_WHEELS=str(wheels))
    assert result.returncode == 0, result.stdout
    stages = _stages(out)
    assert set(stages) == set(RUNNABLE_STAGES + GPU_STAGES)
    for name in RUNNABLE_STAGES:
        assert stages[name]['status'] == 'ok', (name, stages[name], result.stdout)
    for name in GPU_STAGES:
        assert stages[name]['status'] == 'skipped'
        assert 'no CUDA device' in stages[name]['detail']
    assert 'CUDA kernels: False' in (out / 'build.log').read_text()

    summary = json.loads((out / 'summary.json').read_text())
    counts = summary['op_tests']
    assert sum(c['failed'] for c in counts.values()) == 0
    for dtype in ('float32', 'float64', 'float16', 'bfloat16'):
        assert counts[dtype]['passed'] > 0, counts
    assert summary['environment']['cuda_available'] is False
    assert '| op_tests | ok |' in (out / 'summary.md').read_text()

    # The same venv: the package imports without mmengine/mmcv and names what is missing.
    code = textwrap.dedent('''
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import involution_mm
        print([str(w.message) for w in caught if 'only the op layer' in str(w.message)])
        print(sorted(involution_mm.UNAVAILABLE))
        try:
            involution_mm.RedNet
        except ImportError as err:
            print('ImportError:', err)
    ''')
    probe = _run([torch_only_python, '-c', code], timeout=300, PYTHONPATH=ROOT)
    assert probe.returncode == 0, probe.stdout
    lines = probe.stdout.strip().splitlines()
    assert "'mmengine' is not installed" in lines[-3]
    assert lines[-2] == str(sorted(['Involution', 'InvolutionFPN', 'RedNet', 'engine', 'models',
                                    'registry']))
    assert lines[-1].startswith('ImportError: involution_mm.RedNet needs mmengine and mmcv')


def test_run_without_an_output_dir_prints_usage():
    result = _run(['bash', RUN], timeout=60)
    assert result.returncode == 2 and 'usage: tools/gpu_check/run.sh OUT_DIR' in result.stdout


def test_run_with_a_python_without_torch_says_so(tmp_path):
    python = shutil.which('python3') or sys.executable
    probe = _run([python, '-c', 'import torch'], timeout=120)
    if probe.returncode == 0:
        pytest.skip(f'{python} has torch; this test needs a python without it')
    result = _run(['bash', RUN, str(tmp_path / 'out')], timeout=60, PYTHON=python)
    assert result.returncode == 2 and f'cannot import torch with {python}' in result.stdout


def test_summary_of_benchmark_files(tmp_path):
    """summarize.py on a run's files: the stage table, outcomes per dtype, op and model rows."""
    (tmp_path / 'stages.tsv').write_text(
        'stage\tstatus\tseconds\tbudget\tdetail\n'
        'build\tok\t100\t240\t\n'
        'benchmark_model_amp\tfailed\t3\t60\texit 1; see benchmark_model_amp.log: boom\n')
    (tmp_path / 'op_tests.xml').write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_dtypes[torch.bfloat16-3-1-False]"/>'
        '<testcase name="test_dtypes[torch.float16-3-1-False]"><failure/></testcase>'
        '<testcase name="test_matches_reference_float32[1-1-1]"/>'
        '<testcase name="test_second_device"><skipped/></testcase>'
        '</testsuite></testsuites>')
    shutil.copy(osp.join(ROOT, 'benchmarks', 'op_cpu_fp32_2threads_56x56.json'),
                tmp_path / 'op_cuda_float32.json')
    model = {'amp': 'float16', 'results': {'train_bs32': {
        'time_ms': {'rednet50': 80.0, 'resnet50': 100.0},
        'peak_memory_mib': {'rednet50': 900.0, 'resnet50': 1000.0},
        'ratios': [{'rednet': 'rednet50', 'resnet': 'resnet50', 'time_ratio': 0.8,
                    'memory_ratio': 0.9}]}}}
    (tmp_path / 'model_cuda_amp.json').write_text(json.dumps(model))
    result = _run([sys.executable, SUMMARIZE, str(tmp_path)], timeout=60)
    assert result.returncode == 0, result.stdout
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['op_tests'] == {
        'bfloat16': {'passed': 1, 'failed': 0, 'skipped': 0},
        'float16': {'passed': 0, 'failed': 1, 'skipped': 0},
        'float32': {'passed': 1, 'failed': 0, 'skipped': 0},
        'other': {'passed': 0, 'failed': 0, 'skipped': 1}}
    (op,) = summary['op_benchmark']
    assert (op['batch'], op['channels'], op['size']) == (8, 64, 56)
    assert 0 < op['fraction_of_copy_bandwidth'] < 1
    (row,) = summary['model_benchmark']
    assert row['precision'] == 'float16' and row['time_ratio'] == 0.8
    page = (tmp_path / 'summary.md').read_text()
    assert '| benchmark_model_amp | failed |' in page and '| float16 | train_bs32 |' in page


def test_summary_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = _run([sys.executable, SUMMARIZE, str(tmp_path)], timeout=60)
    assert result.returncode == 2 and 'holds no stages.tsv' in result.stdout
