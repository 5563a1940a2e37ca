"""tools/convert_official_checkpoint.py, init_cfg=Pretrained, and torch.load(weights_only)."""
import os
import os.path as osp
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch

from involution_mm.models import InvolutionFPN, RedNet
from involution_mm.utils import load_checkpoint_file
from involution_mm.utils.convert import convert_checkpoint, infer_rednet_args

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'convert_official_checkpoint.py')


def randomized(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return module


def official_meta():
    """What an mmcv 1.x EpochBasedRunner wrote (numpy scalars included)."""
    return dict(mmcv_version='1.3.0', time='Sat Mar 20 12:00:00 2021', epoch=130, iter=81250,
                env_info='sys.platform: linux', seed=np.int64(0),
                hook_msgs=dict(best_score=np.float64(0.7835), last_ckpt='epoch_130.pth'),
                CLASSES=('tench', 'goldfish'))


def save_official(path, state_dict, optimizer=True):
    ckpt = dict(meta=official_meta(), state_dict=state_dict)
    if optimizer:
        ckpt['optimizer'] = dict(state={0: dict(momentum_buffer=torch.zeros(3))},
                                 param_groups=[dict(lr=0.8, momentum=0.9, params=[0])])
    torch.save(ckpt, path)
    return path


def run_tool_subprocess(*args):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _load_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('convert_official_checkpoint', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_tool(capsys):
    """The tool's main() in this process (the subprocess path is tested once)."""
    tool = _load_tool()

    def run(*args):
        code = tool.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture(scope='module')
def cls_checkpoint(tmp_path_factory):
    """An official-format RedNet-26 classification checkpoint (3x3 stem, fc 1000)."""
    backbone = randomized(RedNet(26, stem_kernel_size=3))
    sd = OrderedDict(('backbone.' + k, v) for k, v in backbone.state_dict().items())
    sd['head.fc.weight'] = torch.randn(1000, 2048)
    sd['head.fc.bias'] = torch.randn(1000)
    path = tmp_path_factory.mktemp('cls') / 'rednet26-official.pth'
    return save_official(path, sd), backbone


def test_official_format_needs_the_allow_list(cls_checkpoint, tmp_path):
    path, _ = cls_checkpoint
    # a bare torch.load (weights_only=True by default) in a process that did not import
    # involution_mm refuses the numpy scalars; after the import it loads
    code = textwrap.dedent(f'''
        import pickle, torch
        try:
            torch.load({str(path)!r})
            print('loaded')
        except pickle.UnpicklingError:
            print('refused')
        import involution_mm
        print(sorted(torch.load({str(path)!r})))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split('\n')[:2] == ['refused', "['meta', 'optimizer', 'state_dict']"]


def test_convert_classification_cli_round_trip(cls_checkpoint, tmp_path, run_tool):
    src, backbone = cls_checkpoint
    dst = tmp_path / 'rednet26.pth'
    code, out, err = run_tool_subprocess(src, dst, '--report', tmp_path / 'report.json')
    assert code == 0, out + err
    assert 'kind: classification' in out
    assert "'depth': 26" in out and "'stem_kernel_size': 3" in out
    n = len(backbone.state_dict()) + 2
    assert f'mapped: {n} keys (0 renamed' in out
    assert 'missing: 0' in out and 'unexpected: 0' in out and 'shape mismatches: 0' in out
    assert "dropped top-level entries: ['optimizer']" in out
    assert (tmp_path / 'report.json').exists()
    converted = torch.load(dst)  # plain torch.load, weights_only default
    assert set(converted) == {'meta', 'state_dict'}
    assert converted['meta']['kind'] == 'classification'
    assert converted['meta']['source_meta']['mmcv_version'] == '1.3.0'
    assert len(converted['state_dict']) == n

    # loads into a fresh backbone through init_cfg, with the classification prefix
    model = RedNet(26, init_cfg=dict(type='Pretrained', checkpoint=str(dst), prefix='backbone.'))
    model.init_weights()
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the official file itself also loads through init_cfg (weights-only torch.load inside
    # mmengine works: involution_mm allow-lists the numpy scalars of its meta)
    model = RedNet(26, init_cfg=dict(type='Pretrained', checkpoint=str(src), prefix='backbone.'))
    model.init_weights()
    assert torch.equal(model.state_dict()['layer3.3.conv2.conv2.conv.weight'],
                       backbone.state_dict()['layer3.3.conv2.conv2.conv.weight'])
    # the same with a backbone-only file and no prefix
    dst2 = tmp_path / 'rednet26_backbone.pth'
    code, out, err = run_tool(src, dst2, '--backbone-only')
    assert code == 0, out + err
    model = RedNet(26, init_cfg=dict(type='Pretrained', checkpoint=str(dst2)))
    model.init_weights()
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(not torch.all(m.weight == 0) for n_, m in model.named_modules()
               if n_.endswith('bn3'))  # zero_init_residual does not overwrite pretrained


@pytest.mark.parametrize('where', ['backbone', 'classifier'])
def test_official_classification_checkpoint_initialises_the_in1k_classifier(
        cls_checkpoint, where, mmpretrain_models):
    """The official file (``backbone.*``, ``head.fc.*``) as the init_cfg of the RedNet-26
    ImageNet config's backbone (prefix ``backbone.``) or of the whole ImageClassifier: the
    tools' pre-check accepts it, and the weights are the file's after init_weights."""
    from mmengine.config import Config
    from involution_mm.utils.checkpoint import build_model_from_config
    from involution_mm.utils.runtime import check_checkpoint_files
    src, backbone = cls_checkpoint
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'rednet26_64xb32_in1k.py'))
    if where == 'backbone':
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(src),
                                           prefix='backbone.')
    else:
        cfg.model.init_cfg = dict(type='Pretrained', checkpoint=str(src))
    check_checkpoint_files(cfg)
    model = build_model_from_config(cfg, device='cpu')
    model.init_weights()
    for k, v in backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    official = torch.load(src)['state_dict']
    fc_loaded = all(torch.equal(model.head.fc.state_dict()[k], official[f'head.fc.{k}'])
                    for k in ('weight', 'bias'))
    assert fc_loaded == (where == 'classifier')


def test_infer_depth_and_stem_kernel_for_every_depth():
    for depth in (26, 38, 50, 101, 152):
        for k in (3, 7):
            sd = RedNet(depth, stem_kernel_size=k).state_dict()
            args = infer_rednet_args(sd, prefix='')
            assert (args['depth'], args['stem_kernel_size']) == (depth, k)


def _detection_like(stem_k=7):
    """backbone + involution FPN + heads, official det key names."""
    sd = OrderedDict()
    for prefix, module in (('backbone.', RedNet(50, stem_kernel_size=stem_k,
                                                out_indices=(0, 1, 2, 3))),
                           ('neck.', InvolutionFPN([256, 512, 1024, 2048], 256, 5))):
        for k, v in randomized(module).state_dict().items():
            sd[prefix + k] = v
    sd['rpn_head.rpn_conv.weight'] = torch.randn(256, 256, 3, 3)
    sd['roi_head.bbox_head.fc_cls.weight'] = torch.randn(81, 1024)
    return sd


def test_convert_detection_without_config(tmp_path):
    src = save_official(tmp_path / 'faster_rcnn_red50_neck_fpn.pth', _detection_like())
    report = convert_checkpoint(src, tmp_path / 'out.pth')
    assert report['ok'] and report['kind'] == 'detection'
    assert report['arch']['stem_kernel_size'] == 7
    assert report['arch']['neck']['type'] == 'InvolutionFPN'
    assert report['unvalidated'] == ['rpn_head.rpn_conv.weight',
                                     'roi_head.bbox_head.fc_cls.weight']
    assert len(report['mapped']) == 449 + len(InvolutionFPN([256, 512, 1024, 2048], 256,
                                                            5).state_dict())


def test_report_lists_exactly_missing_unexpected_mismatched(tmp_path, run_tool):
    sd = _detection_like()
    del sd['backbone.layer2.1.bn2.running_var']
    sd['backbone.layer2.1.extra.weight'] = torch.zeros(3)
    sd['neck.fpn_convs.1.conv2.conv.bias'] = torch.zeros(10)
    src = save_official(tmp_path / 'broken.pth', sd)
    dst = tmp_path / 'out.pth'
    code, out, err = run_tool(src, dst)
    assert code == 1 and not dst.exists()
    assert 'missing: 1\n  backbone.layer2.1.bn2.running_var' in out
    assert 'unexpected: 1\n  backbone.layer2.1.extra.weight' in out
    assert ('shape mismatches: 1\n  neck.fpn_convs.1.conv2.conv.bias: (10,) in the file, '
            '(784,) expected') in out
    assert 'PROBLEMS FOUND' in out
    code, out, err = run_tool(src, dst, '--allow-partial')
    assert code == 1 and dst.exists()


def test_convert_with_config_checks_every_key(tmp_path):
    pytest.importorskip('mmdet.models')
    cfg = tmp_path / 'mask_rcnn_red50_neck_fpn_head.py'
    cfg.write_text(textwrap.dedent('''
        _base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
        custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)
        model = dict(
            backbone=dict(_delete_=True, type='RedNet', depth=50, stem_kernel_size=7,
                          out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True,
                          init_cfg=None),
            neck=dict(type='InvolutionFPN'),
            rpn_head=dict(type='InvolutionRPNHead'),
            roi_head=dict(mask_head=dict(type='InvolutionFCNMaskHead')))
    '''))
    from involution_mm.utils.checkpoint import build_model_from_config
    model = randomized(build_model_from_config(str(cfg), device='cpu'))
    sd = model.state_dict()
    src = save_official(tmp_path / 'mask_rcnn_official.pth', sd)
    dst = tmp_path / 'mask_rcnn.pth'
    report = convert_checkpoint(src, dst, config=str(cfg))
    assert report['ok'] and report['kind'] == 'detection'
    assert len(report['mapped']) == len(sd) and not report['unvalidated']
    assert any(d.startswith('roi_head.mask_head.convs.3.0.conv2') for _, d in report['mapped'])
    # the converted file loads into the model with nothing missing or unexpected
    fresh = build_model_from_config(str(cfg), device='cpu')
    result = fresh.load_state_dict(load_checkpoint_file(dst)['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # a classification checkpoint (3x3 stem) does not fit the detection model (7x7 stem)
    cls_sd = OrderedDict(('backbone.' + k, v) for k, v in RedNet(50).state_dict().items())
    src = save_official(tmp_path / 'cls.pth', cls_sd)
    report = convert_checkpoint(src, None, config=str(cfg), backbone_only=True)
    assert [m[0] for m in report['mismatched']] == ['stem.1.conv2.conv.weight',
                                                    'stem.1.conv2.conv.bias']


def test_convert_segmentation_like(tmp_path):
    sd = OrderedDict()
    for prefix, module in (('backbone.', RedNet(50, stem_kernel_size=7)),
                           ('neck.', InvolutionFPN([256, 512, 1024, 2048], 256, 4))):
        sd.update((prefix + k, v) for k, v in module.state_dict().items())
    sd['decode_head.conv_seg.weight'] = torch.randn(19, 128, 1, 1)
    report = convert_checkpoint(save_official(tmp_path / 'fpn_red50_neck.pth', sd), None)
    assert report['ok'] and report['kind'] == 'segmentation'
    assert report['unvalidated'] == ['decode_head.conv_seg.weight']


def test_missing_files_fail_fast_naming_the_file(tmp_path, run_tool):
    missing = tmp_path / 'no_such_rednet.pth'
    code, out, err = run_tool(missing, tmp_path / 'out.pth')
    assert code == 2 and 'no_such_rednet.pth' in err
    with pytest.raises(FileNotFoundError, match='no_such_rednet.pth'):
        load_checkpoint_file(missing)
    model = RedNet(26, init_cfg=dict(type='Pretrained', checkpoint=str(missing),
                                     prefix='backbone.'))
    with pytest.raises(FileNotFoundError, match='no_such_rednet.pth'):
        model.init_weights()


class _NotData:
    pass


def test_untrusted_objects_are_refused(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save(dict(state_dict={'w': torch.zeros(1)}, extra=_NotData()), path)
    with pytest.raises(RuntimeError, match=r'odd.pth.*trusted=True'):
        load_checkpoint_file(path)
    assert set(load_checkpoint_file(path, trusted=True)) == {'state_dict', 'extra'}


RUNNER_SCRIPT = '''
import pickle, sys, torch, torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from mmengine.model import BaseModel
from mmengine.runner import Runner

class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.lin(inputs)
        return dict(loss=((out - labels) ** 2).mean()) if mode == 'loss' else out

class DS(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return dict(inputs=torch.full((4,), float(i)), labels=torch.tensor([float(i)]))

def collate(batch):
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}

def make(iters, **kw):
    return Runner(model=Toy(), work_dir=sys.argv[1], default_scope=None,
                  train_dataloader=DataLoader(DS(), batch_size=2, collate_fn=collate),
                  train_cfg=dict(by_epoch=False, max_iters=iters),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
                  param_scheduler=dict(type='MultiStepLR', milestones=[1], by_epoch=False),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                                     by_epoch=False)), **kw)

make(2).train()
ckpt = sys.argv[1] + '/iter_2.pth'
try:
    torch.load(ckpt)
    print('RESULT plain load: ok')
except pickle.UnpicklingError:
    print('RESULT plain load: refused')
import involution_mm  # what custom_imports does
loaded = torch.load(ckpt)
print('RESULT after import:', sorted(loaded))
runner = make(3, resume=True)
runner.train()
print('RESULT resumed to iter', runner.iter)
print('RESULT loss buffer', runner.message_hub.get_scalar('train/loss').mean() >= 0)
'''


def test_mmengine_runner_checkpoint_resume_on_torch_2_13(tmp_path):
    script = tmp_path / 'runner.py'
    script.write_text(RUNNER_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / 'work')],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line[len('RESULT '):] for line in proc.stdout.splitlines()
             if line.startswith('RESULT ')]
    assert lines == ['plain load: refused',
                     "after import: ['message_hub', 'meta', 'optimizer', 'param_schedulers', "
                     "'state_dict']",
                     'resumed to iter 3', 'loss buffer True']
