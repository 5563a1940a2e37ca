"""tools/train.py and tools/test.py, run as a user runs them (subprocesses), on tiny
synthetic data: a detection and a segmentation demo config for a few iterations, resuming
after an interruption from the saved iteration with the losses of the uninterrupted run,
testing with metrics printed; and the
early, clear failures (missing checkpoint files, --amp without CUDA, mmpretrain without
torchvision)."""
import os
import os.path as osp
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import involution_mm  # noqa: F401  (torch.load reads mmengine checkpoints)

pytestmark = pytest.mark.slow


def iters_logged(text):
    return [int(m) for m in re.findall(r'Iter\(train\) \[\s*(\d+)/', text)]


def losses_by_iter(work_dir):
    """{iteration: {loss name: value}} of the latest run in ``work_dir`` (mmengine's
    vis_data/scalars.json; with log_processor.window_size=1 each is that iteration's own)."""
    import glob
    import json
    runs = sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json')))
    assert runs, f'no scalars.json under {work_dir}'
    out = {}
    with open(runs[-1]) as f:
        for line in f:
            entry = json.loads(line)
            if 'loss' in entry:
                out[entry['iter']] = {k: v for k, v in entry.items() if 'loss' in k}
    return out


def assert_same_losses(resumed, uninterrupted, iters):
    for it in iters:
        assert resumed.get(it) == uninterrupted.get(it), (
            f'iteration {it}: resumed {resumed.get(it)} != uninterrupted {uninterrupted.get(it)}')


#: each logged loss is that iteration's own, not a mean over a window of iterations
EXACT_LOG = ['log_processor.window_size=1']


def test_det_train_interrupt_resume_and_test(tmp_path, synthetic_data, tools):
    """Mask R-CNN demo config: train, kill the run after its iteration-2 checkpoint,
    `--resume` continues at iteration 3 with the losses of an uninterrupted run (same
    seed) at iterations 3 and 4; tools/test.py prints bbox and segm AP and writes --out
    and --show-dir."""
    opts = tools.det_data_options(synthetic_data) + tools.schedule_options(4, ckpt_interval=2) \
        + EXACT_LOG
    full = tools.run_tool(['tools/train.py', tools.DET_DEMO, '--work-dir',
                           str(tmp_path / 'full'), '--cfg-options'] + opts)
    assert full.returncode == 0, full.stdout[-4000:]
    work = tmp_path / 'det'
    cmd = [sys.executable, 'tools/train.py', tools.DET_DEMO, '--work-dir', str(work),
           '--cfg-options'] + opts
    log1 = open(tmp_path / 'first.log', 'w')
    proc = subprocess.Popen(cmd, cwd=tools.ROOT, env=tools.tool_env(), stdout=log1,
                            stderr=subprocess.STDOUT)
    last = work / 'last_checkpoint'
    deadline = time.time() + 400
    try:
        # last_checkpoint is written after the checkpoint file is complete
        while not (last.exists() and last.read_text().strip().endswith('iter_2.pth')):
            assert proc.poll() is None, (tmp_path / 'first.log').read_text()[-3000:]
            assert time.time() < deadline, 'no iter_2 checkpoint in time'
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # the interruption
    finally:
        proc.wait()
        log1.close()
    assert proc.returncode != 0, 'the first run ended by itself: the test did not interrupt it'
    assert not (work / 'iter_4.pth').exists()

    resumed = tools.run_tool(['tools/train.py', tools.DET_DEMO, '--work-dir', str(work),
                              '--resume', '--cfg-options'] + opts)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    out = resumed.stdout
    assert re.search(r'Auto resumed from the latest checkpoint \S*iter_2\.pth', out), out[-3000:]
    assert iters_logged(out) == [3, 4], iters_logged(out)
    assert_same_losses(losses_by_iter(work), losses_by_iter(tmp_path / 'full'), (3, 4))
    ckpt = torch.load(work / 'iter_4.pth', map_location='cpu')  # weights_only, torch 2.13
    assert ckpt['meta']['iter'] == 4 and 'rng_state' in ckpt

    pkl = tmp_path / 'det.pkl'
    show = tmp_path / 'show'
    test = tools.run_tool(['tools/test.py', tools.DET_DEMO, str(work / 'iter_4.pth'),
                           '--work-dir', str(tmp_path / 'det_test'), '--out', str(pkl),
                           '--show-dir', str(show), '--metrics-json',
                           str(tmp_path / 'm.json'), '--cfg-options']
                          + tools.det_data_options(synthetic_data))
    assert test.returncode == 0, test.stdout[-4000:]
    result = re.search(r'RESULT bbox_mAP=([-\d.]+) segm_mAP=([-\d.]+)', test.stdout)
    assert result, test.stdout[-3000:]
    assert 'coco/bbox_mAP_50' in test.stdout
    with open(pkl, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 4 and 'pred_instances' in preds[0]
    assert len(os.listdir(show)) == 4
    assert (tmp_path / 'm.json').exists()


def test_seg_train_resume_from_path_and_test(tmp_path, synthetic_data, tools):
    """Semantic FPN demo config (SyncBN in the config, BN on CPU; dropout in the head): 4
    iterations, and `--resume CKPT` from its iteration-2 checkpoint in another work dir
    gives the same losses at iterations 3 and 4; tools/test.py prints mIoU, writes
    prediction PNGs with --out and painted ones with --show-dir."""
    opts = tools.seg_data_options(synthetic_data) + tools.schedule_options(4, ckpt_interval=2) \
        + EXACT_LOG
    full = tools.run_tool(['tools/train.py', tools.SEG_DEMO, '--work-dir',
                           str(tmp_path / 'full'), '--cfg-options'] + opts)
    assert full.returncode == 0, full.stdout[-4000:]
    assert 'SyncBN norm config(s) -> BN' in full.stdout or torch.cuda.is_available()
    assert iters_logged(full.stdout) == [1, 2, 3, 4]
    work = tmp_path / 'seg'
    second = tools.run_tool(['tools/train.py', tools.SEG_DEMO, '--work-dir', str(work),
                             '--resume', str(tmp_path / 'full' / 'iter_2.pth'),
                             '--cfg-options'] + opts)
    assert second.returncode == 0, second.stdout[-4000:]
    assert iters_logged(second.stdout) == [3, 4]
    assert_same_losses(losses_by_iter(work), losses_by_iter(tmp_path / 'full'), (3, 4))
    pred_dir = tmp_path / 'pred'
    test = tools.run_tool(['tools/test.py', tools.SEG_DEMO, str(work / 'iter_4.pth'),
                           '--work-dir', str(tmp_path / 'seg_test'), '--out', str(pred_dir),
                           '--show-dir', str(tmp_path / 'seg_show'), '--cfg-options']
                          + tools.seg_data_options(synthetic_data))
    assert test.returncode == 0, test.stdout[-4000:]
    assert re.search(r'RESULT mIoU=[\d.]+', test.stdout), test.stdout[-3000:]
    assert len(os.listdir(pred_dir)) == 3
    painted = [f for _, _, files in os.walk(tmp_path / 'seg_show') for f in files
               if f.endswith('.png')]
    assert len(painted) == 3


def test_missing_pretrained_stops_train_at_start(tmp_path, tools):
    t = time.time()
    r = tools.run_tool(['tools/train.py', 'configs/mask_rcnn_rednet50_fpn_coco.py',
                        '--work-dir', str(tmp_path), '--cfg-options',
                        f'model.backbone.init_cfg.checkpoint={tmp_path}/rednet50.pth'])
    assert r.returncode == 2
    assert f'{tmp_path}/rednet50.pth' in r.stdout
    assert 'tools/convert_official_checkpoint.py' in r.stdout
    assert 'Traceback' not in r.stdout
    assert time.time() - t < 120
    assert not any(name.endswith('.log') for _, _, files in os.walk(tmp_path) for name in files)


def test_missing_test_checkpoint_is_named(tmp_path, tools):
    r = tools.run_tool(['tools/test.py', tools.SEG_DEMO, str(tmp_path / 'missing.pth'),
                        '--work-dir', str(tmp_path)])
    assert r.returncode == 2
    assert 'missing.pth' in r.stdout and 'load_from' in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp works with CUDA')
def test_amp_without_cuda_fails_clearly(tmp_path, tools):
    r = tools.run_tool(['tools/train.py', tools.SEG_DEMO, '--amp', '--work-dir',
                        str(tmp_path)])
    assert r.returncode == 2
    assert '--amp needs a CUDA GPU' in r.stdout


def test_classification_config_reports_why_it_cannot_run_here(tmp_path, tools):
    try:
        import mmpretrain.models  # noqa: F401
        pytest.skip('mmpretrain.models imports here')
    except Exception:
        pass
    r = tools.run_tool(['tools/train.py', 'configs/rednet26_64xb32_in1k.py', '--work-dir',
                        str(tmp_path)])
    assert r.returncode == 2
    assert 'mmpretrain.models does not import' in r.stdout and 'torchvision' in r.stdout


def test_make_synthetic_data_is_deterministic(tmp_path):
    from involution_mm.datasets import (make_synthetic_cityscapes, make_synthetic_coco,
                                        make_synthetic_imagenet)
    import hashlib
    import json

    def digest(root):
        h = hashlib.sha256()
        for d, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                with open(osp.join(d, name), 'rb') as f:
                    h.update(name.encode() + f.read())
        return h.hexdigest()

    for i in (1, 2):
        make_synthetic_coco(str(tmp_path / f'c{i}'), num_train=3, num_val=2, seed=5)
        make_synthetic_cityscapes(str(tmp_path / f's{i}'), num_train=2, num_val=1, seed=5)
        make_synthetic_imagenet(str(tmp_path / f'i{i}'), num_train=8, num_val=4, seed=5)
    assert digest(tmp_path / 'c1') == digest(tmp_path / 'c2')
    assert digest(tmp_path / 's1') == digest(tmp_path / 's2')
    assert digest(tmp_path / 'i1') == digest(tmp_path / 'i2')
    ann = json.loads((tmp_path / 'c1' / 'annotations' / 'instances_train2017.json').read_text())
    assert len(ann['categories']) == 80
    used = {a['category_id'] for a in ann['annotations']}
    assert used <= {13, 37, 38, 72}
    import mmcv
    import numpy as np
    gt = mmcv.imread(str(next((tmp_path / 's1' / 'gtFine' / 'train').rglob(
        '*_labelTrainIds.png'))), flag='unchanged')
    assert set(np.unique(gt)) <= {0, 1, 2, 8, 10, 11, 13, 255}
