"""Checkpoint problems stop the tools before any model is built, with one line that names
the file and what is wrong: missing, empty, truncated, not a checkpoint, objects outside
the weights-only allow-list (nothing in the file runs), weights that do not fit the
config."""
import os
import pickle
import sys
import time
from collections import OrderedDict

import pytest
import torch

from involution_mm.utils.checkpoint import (CheckpointError, CheckpointNotFoundError,
                                            build_model_from_config, load_checkpoint_file,
                                            state_shapes)
from involution_mm.utils.runtime import adapt_cfg_to_machine, check_checkpoint_files

SEG_DEMO = 'configs/demo/fpn_rednet50_synthetic.py'


class _RunsCode:
    """Unpickling this would create ``path``: the allow-list must refuse it first."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def _bad_files(tmp_path):
    """name -> (path, the phrase the error must contain)."""
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, good)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, legacy,
               _use_new_zipfile_serialization=False)
    files = {}

    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    files['empty'] = (write('empty.pth', b''), 'the file is empty')
    files['text'] = (write('text.pth', b'hello, not a checkpoint\n' * 20), 'not a checkpoint')
    files['truncated_zip'] = (write('trunc.pth', good.read_bytes()[:1500]),
                              'truncated or corrupt')
    files['truncated_legacy'] = (write('trunc_legacy.pth', legacy.read_bytes()[:200]),
                                 'truncated')
    import zipfile
    foreign_zip = tmp_path / 'other.zip'
    with zipfile.ZipFile(foreign_zip, 'w') as z:
        z.writestr('readme.txt', 'hi')
    files['foreign_zip'] = (foreign_zip, 'without the data.pkl')
    arbitrary = tmp_path / 'pickle.pth'
    with open(arbitrary, 'wb') as f:
        pickle.dump({'state_dict': {}}, f)
    files['plain_pickle'] = (arbitrary, 'not a checkpoint')
    return files


def test_unreadable_files_are_named_in_one_line(tmp_path):
    for name, (path, phrase) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint_file(path)
        msg = str(info.value)
        assert str(path) in msg and phrase in msg, (name, msg)
        assert '\n' not in msg, (name, msg)
    with pytest.raises(CheckpointNotFoundError, match='nothing.pth'):
        load_checkpoint_file(tmp_path / 'nothing.pth')


def test_objects_outside_the_allow_list_do_not_run(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'payload.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match='outside the weights-only allow-list') as info:
        load_checkpoint_file(path)
    assert 'nothing in it ran' in str(info.value) and '\n' not in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope='module')
def seg_cfg():
    from mmengine.config import Config
    cfg = Config.fromfile(SEG_DEMO)
    adapt_cfg_to_machine(cfg)
    return cfg


@pytest.fixture(scope='module')
def seg_shapes(seg_cfg):
    return state_shapes(build_model_from_config(seg_cfg))  # meta: no memory


def _save(path, shapes, change=None):
    state = OrderedDict((k, torch.zeros(s)) for k, s in shapes.items())
    if change:
        change(state)
    torch.save({'state_dict': state, 'meta': {}}, path)
    return str(path)


def test_test_and_resume_checkpoints_must_fit_exactly(tmp_path, seg_cfg, seg_shapes):
    cfg = seg_cfg.copy()
    cfg.load_from = _save(tmp_path / 'ok.pth', seg_shapes)
    check_checkpoint_files(cfg, training=False)

    def reshape(sd):
        sd['backbone.stem.0.conv.weight'] = torch.zeros(16, 3, 3, 3)

    cfg.load_from = _save(tmp_path / 'shape.pth', seg_shapes, reshape)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_files(cfg, training=False)
    msg = str(info.value)
    assert 'shape.pth' in msg and 'do not fit' in msg and '\n' not in msg
    assert 'backbone.stem.0.conv.weight (16, 3, 3, 3) in the file, (32, 3, 3, 3)' in msg

    def drop(sd):
        del sd['decode_head.conv_seg.weight']

    cfg.load_from = _save(tmp_path / 'drop.pth', seg_shapes, drop)
    cfg.resume = True
    with pytest.raises(CheckpointError, match='1 missing from the file '
                       r'\(decode_head.conv_seg.weight\)'):
        check_checkpoint_files(cfg, training=True)
    # without resume, load_from loads non-strictly (fine-tuning): a partial fit is accepted
    cfg.resume = False
    check_checkpoint_files(cfg, training=True)


def test_resume_without_path_checks_the_latest_checkpoint(tmp_path, seg_cfg, seg_shapes):
    cfg = seg_cfg.copy()
    cfg.work_dir = str(tmp_path)
    cfg.resume, cfg.load_from = True, None
    check_checkpoint_files(cfg, training=True)  # no checkpoint yet: a fresh start
    latest = tmp_path / 'iter_4.pth'
    latest.write_bytes(b'PK\x03\x04 cut off')
    (tmp_path / 'last_checkpoint').write_text(str(latest))
    with pytest.raises(CheckpointError, match=r'--resume .*iter_4.pth: truncated or corrupt'):
        check_checkpoint_files(cfg, training=True)


def test_pretrained_init_must_fit_somewhere(tmp_path, seg_cfg, seg_shapes):
    cfg = seg_cfg.copy()
    backbone = OrderedDict((k, s) for k, s in seg_shapes.items() if k.startswith('backbone.'))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', prefix='backbone.',
                                       checkpoint=_save(tmp_path / 'rednet.pth', backbone))
    check_checkpoint_files(cfg, training=True)
    # the same file without the prefix: no tensor fits, and the message says which prefix
    cfg.model.backbone.init_cfg.pop('prefix')
    with pytest.raises(CheckpointError, match=r"not one tensor fits.*set prefix='backbone.'"):
        check_checkpoint_files(cfg, training=True)
    cfg.model.backbone.init_cfg.prefix = 'encoder.'
    with pytest.raises(CheckpointError, match="no key starts with its prefix 'encoder.'"):
        check_checkpoint_files(cfg, training=True)
    cfg.model.backbone.init_cfg.prefix = 'backbone.'
    cfg.model.backbone.init_cfg.checkpoint = str(_bad_files(tmp_path)['text'][0])
    with pytest.raises(CheckpointError, match=r'^model.backbone.init_cfg.checkpoint: .*text.pth: '
                       'not a checkpoint'):
        check_checkpoint_files(cfg, training=True)


def _run(args, tmp_path):
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_WAIT_POLICY='PASSIVE')
    start = time.time()
    r = subprocess.run([sys.executable] + args, cwd=root, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    return r, time.time() - start


def test_tools_stop_before_building_with_one_line(tmp_path):
    """A text file given to tools/test.py, a truncated one to tools/train.py --resume and to
    the converter: exit status 2, one error line naming the file, no traceback, and no
    work-dir log (the runner was never built)."""
    files = _bad_files(tmp_path)
    garbage, truncated = files['text'][0], files['truncated_zip'][0]
    cases = [
        (['tools/test.py', SEG_DEMO, str(garbage), '--work-dir', str(tmp_path / 'w1')],
         garbage, 'not a checkpoint'),
        (['tools/train.py', SEG_DEMO, '--resume', str(truncated), '--work-dir',
          str(tmp_path / 'w2')], truncated, 'truncated or corrupt'),
        (['tools/convert_official_checkpoint.py', str(truncated), str(tmp_path / 'o.pth')],
         truncated, 'truncated or corrupt'),
    ]
    for args, path, phrase in cases:
        r, _ = _run(args, tmp_path)
        assert r.returncode == 2, (args, r.stdout[-2000:], r.stderr[-2000:])
        errors = [line for line in r.stderr.splitlines() if 'error:' in line]
        assert len(errors) == 1 and str(path) in errors[0] and phrase in errors[0], r.stderr
        assert 'Traceback' not in r.stderr + r.stdout
    logs = [n for _, _, names in os.walk(tmp_path) for n in names if n.endswith('.log')]
    assert not logs
    assert not (tmp_path / 'o.pth').exists()
