"""The involution_mm registry node, the short names in mmdet/mmseg/mmpretrain, and errors."""
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS

import involution_mm
from involution_mm.models import InvolutionFPN, RedNet
from involution_mm.registry import DOWNSTREAM_STATUS, MODELS

try:
    import mmpretrain.models  # noqa: F401
    MMPRETRAIN_MODELS = True
except Exception:
    MMPRETRAIN_MODELS = False


def run_fresh(code, tmp_path):
    """Runs ``code`` in a fresh interpreter (outside the repository) and returns stdout."""
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_node_is_a_child_of_the_mmengine_root():
    assert MODELS.scope == 'involution_mm'
    assert MODELS.parent is ROOT_MODELS
    assert ROOT_MODELS.children['involution_mm'] is MODELS
    for name in ('RedNet', 'InvolutionFPN', 'InvolutionRPNHead', 'InvolutionFCNMaskHead',
                 'FPN_involution', 'RPNHead_involution', 'FCNMaskHead_involution'):
        assert name in MODELS.module_dict, name


def test_scoped_names_work_without_importing_involution_mm(tmp_path):
    out = run_fresh('''
        import sys
        from mmengine.registry import DefaultScope
        from mmengine.registry import MODELS as ROOT
        import mmdet.registry, mmseg.registry
        assert 'involution_mm' not in sys.modules
        DefaultScope.get_instance('det', scope_name='mmdet')
        m = mmdet.registry.MODELS.build(dict(type='involution_mm.RedNet', depth=26))
        print(type(m).__module__, type(m).__name__)
        neck = mmdet.registry.MODELS.build(dict(type='involution_mm.InvolutionFPN',
            in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5))
        print(type(neck).__name__)
        with DefaultScope.overwrite_default_scope('mmseg'):
            m = ROOT.build(dict(type='involution_mm.RedNet', depth=38))
            print(type(m).__name__, m.depth)
            m = mmseg.registry.MODELS.build(dict(type='involution_mm.RedNet', depth=50))
            print(type(m).__name__, m.depth)
    ''', tmp_path)
    assert out.split('\n')[:4] == ['involution_mm.models.backbones.rednet RedNet',
                                   'InvolutionFPN', 'RedNet 38', 'RedNet 50']


def test_short_names_registered_downstream():
    import mmdet.registry
    import mmpretrain.registry
    import mmseg.registry
    assert DOWNSTREAM_STATUS['mmdet'].startswith('registered')
    assert mmdet.registry.MODELS.module_dict['RedNet'] is RedNet
    assert mmdet.registry.MODELS.module_dict['InvolutionFPN'] is InvolutionFPN
    from involution_mm.models.heads import InvolutionFCNMaskHead, InvolutionRPNHead
    assert mmdet.registry.MODELS.module_dict['InvolutionRPNHead'] is InvolutionRPNHead
    assert mmdet.registry.MODELS.module_dict['InvolutionFCNMaskHead'] is InvolutionFCNMaskHead
    assert mmseg.registry.MODELS.module_dict['RedNet'] is RedNet
    assert mmseg.registry.MODELS.module_dict['InvolutionFPN'] is InvolutionFPN
    assert 'InvolutionRPNHead' not in mmseg.registry.MODELS.module_dict  # mmdet-only heads
    assert mmpretrain.registry.MODELS.module_dict['RedNet'] is RedNet


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_short_names_under_each_default_scope(scope):
    if scope == 'mmpretrain' and not MMPRETRAIN_MODELS:
        pytest.skip('mmpretrain.models does not import here (no torchvision for this CPU '
                    'torch), and its registry imports it on every lookup')
    with DefaultScope.overwrite_default_scope(scope):
        model = ROOT_MODELS.build(dict(type='RedNet', depth=26, out_indices=(0, 1, 2, 3)))
        neck = ROOT_MODELS.build(dict(type='InvolutionFPN', in_channels=[256, 512, 1024, 2048],
                                      out_channels=256, num_outs=4))
    assert isinstance(model, RedNet) and isinstance(neck, InvolutionFPN)


def test_custom_imports_config_in_fresh_process(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent('''
        default_scope = 'mmseg'
        custom_imports = dict(imports=['involution_mm'], allow_failed_imports=False)
        model = dict(type='RedNet', depth=50, stem_kernel_size=7)
    '''))
    out = run_fresh(f'''
        from mmengine.config import Config
        from mmengine.registry import DefaultScope, MODELS
        cfg = Config.fromfile({str(cfg)!r})  # imports custom_imports
        with DefaultScope.overwrite_default_scope(cfg.default_scope):
            m = MODELS.build(cfg.model)
        print(type(m).__name__, m.stem_kernel_size)
    ''', tmp_path)
    assert out.strip().endswith('RedNet 7')


def test_import_survives_missing_or_broken_downstream(tmp_path):
    out = run_fresh('''
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == 'mmdet' or name.startswith('mmdet.'):
                    raise ImportError('mmdet blocked for the test')
                if name == 'mmseg':
                    raise AssertionError('MMCV==9.9 is used but incompatible')
                return None
        sys.meta_path.insert(0, Block())
        import involution_mm
        from involution_mm.registry import DOWNSTREAM_STATUS, MODELS
        import mmpretrain.registry
        print(DOWNSTREAM_STATUS['mmdet'].split(':')[0], DOWNSTREAM_STATUS['mmseg'].split(':')[0],
              DOWNSTREAM_STATUS['mmpretrain'].split(':')[0])
        print('RedNet' in mmpretrain.registry.MODELS.module_dict,
              'InvolutionRPNHead' in MODELS.module_dict)
        print(type(involution_mm.models.heads.IMPORT_ERROR).__name__)
        m = MODELS.build(dict(type='RedNet', depth=26))
        print(type(m).__name__)
    ''', tmp_path)
    assert out.split('\n')[:4] == ['skipped skipped registered', 'True False', 'ImportError',
                                   'RedNet']


def test_wrong_name_depth_channels_errors():
    with DefaultScope.overwrite_default_scope('mmdet'):
        with pytest.raises(KeyError, match='RedNett'):
            ROOT_MODELS.build(dict(type='RedNett', depth=50))
        with pytest.raises(ValueError, match=r'valid depths are \[26, 38, 50, 101, 152\]'):
            ROOT_MODELS.build(dict(type='RedNet', depth=18))
        with pytest.raises(ValueError, match=r'valid depths'):
            ROOT_MODELS.build(dict(type='involution_mm.RedNet', depth=200))
        with pytest.raises(ValueError, match='feat_channels'):
            ROOT_MODELS.build(dict(type='InvolutionRPNHead', in_channels=256, feat_channels=512,
                                   anchor_generator=dict(type='AnchorGenerator', scales=[8],
                                                         ratios=[1.0], strides=[4])))


def test_version_and_exports():
    assert isinstance(involution_mm.__version__, str)
    assert involution_mm.RedNet is RedNet and involution_mm.InvolutionFPN is InvolutionFPN
