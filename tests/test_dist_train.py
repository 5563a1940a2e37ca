"""tools/dist_train.sh CONFIG 2 on a CPU-only machine: 2 processes started by torchrun,
gloo, DDP over CPU modules, a few iterations of the Mask R-CNN demo config on the embedded
(synthetic) data; then tools/dist_test.sh evaluates the result with 2 processes."""
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_dist_train_two_processes_gloo(tmp_path, synthetic_data, tools):
    work = tmp_path / 'dist'
    env = tools.tool_env(PORT=str(tools.free_port()), OMP_NUM_THREADS='1')
    cmd = ['bash', 'tools/dist_train.sh', tools.DET_DEMO, '2', '--work-dir', str(work),
           '--cfg-options'] + tools.det_data_options(synthetic_data) + \
        tools.schedule_options(3) + ['train_dataloader.batch_size=1']
    r = subprocess.run(cmd, cwd=tools.ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-5000:]
    out = r.stdout
    assert re.search(r'Distributed training:\s*True', out), out[-3000:]
    assert re.search(r'GPU number: 2', out), out[-3000:]  # mmengine's name for world size
    assert re.search(r'Iter\(train\) \[3/3\]', out), out[-3000:]
    assert (work / 'iter_3.pth').exists()
    # rank 0 logs; the batch of each rank is 1, so 2 processes saw 2 images per iteration
    cfg_dump = next(p for p in os.listdir(work) if p.endswith('.py'))
    assert 'gloo' in (work / cfg_dump).read_text()

    env['PORT'] = str(tools.free_port())
    r = subprocess.run(['bash', 'tools/dist_test.sh', tools.DET_DEMO, str(work / 'iter_3.pth'),
                        '2', '--work-dir', str(tmp_path / 'dist_test'), '--cfg-options']
                       + tools.det_data_options(synthetic_data),
                       cwd=tools.ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-5000:]
    assert re.search(r'RESULT bbox_mAP=[-\d.]+ segm_mAP=[-\d.]+', r.stdout), r.stdout[-3000:]
    assert r.stdout.count('RESULT ') == 1  # printed by rank 0 only
