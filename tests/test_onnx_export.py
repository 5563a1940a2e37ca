"""ONNX export: the involution op's translation, RedNet backbones, a Semantic FPN and a
RetinaNet config through ``involution_mm.deploy`` and tools/deployment/export_onnx.py,
compared with PyTorch in onnxruntime (CPU); the graphs hold standard-domain nodes only;
what cannot be exported fails with a message that says what to export instead.

Models are built from configs with random weights; the detection/segmentation configs run
with a RedNet-26 backbone (``--cfg-options model.backbone.depth=26``) to keep the exports
short: the export path is the same for every depth.
"""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch

onnx = pytest.importorskip('onnx', reason='ONNX export needs onnx (requirements.txt)')
pytest.importorskip('onnxruntime', reason='the export checks need onnxruntime')
pytest.importorskip('onnxscript', reason='ONNX export needs onnxscript (requirements.txt)')

from involution_mm import deploy  # noqa: E402
from involution_mm.ops import HAS_EXTENSION, involution  # noqa: E402
from involution_mm.registry import MODELS  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py')
RTOL = deploy.FP32_REL_TOLERANCE

pytestmark = pytest.mark.skipif(not HAS_EXTENSION,
                                reason='the translation is of the compiled op')


def _tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_parity(module, path, shapes):
    session = deploy.ort_session(path)
    name = session.get_inputs()[0].name
    for shape in shapes:
        x = np.random.default_rng(sum(shape)).standard_normal(shape, np.float32)
        abs_diff, rel_diff = deploy.compare(deploy.torch_outputs(module, x),
                                            session.run(None, {name: x}))
        assert rel_diff <= RTOL, (shape, abs_diff, rel_diff)


class InvolutionOp(torch.nn.Module):
    def __init__(self, kernel_size, stride, dilation, padding=None):
        super().__init__()
        self.hyper = (kernel_size, stride, dilation, padding)

    def forward(self, x, weight):
        return involution(x, weight, *self.hyper)


@pytest.mark.parametrize(
    'kernel_size,stride,dilation,padding',
    [(7, 1, 1, None), (7, 2, 1, None), (5, 1, 2, None), (7, 2, 2, 4), (3, 2, 3, None)],
    ids=['k7', 'k7_s2', 'k5_d2', 'k7_s2_d2_p4', 'k3_s2_d3'])
def test_op_translation_matches_the_op_at_other_sizes(tmp_path, kernel_size, stride,
                                                      dilation, padding):
    """The banded-MatMul translation at widths that leave a partial last tile (10, 16 at
    stride 1), one narrower than a tile (5), odd sizes with stride 2, dilation and a padding
    other than the default."""
    channels, groups = 8, 2
    h, w = 13, 10
    pad = dilation * (kernel_size - 1) // 2 if padding is None else padding

    def inputs(b, h, w):
        ho, wo = ((n + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1 for n in (h, w))
        return (torch.randn(b, channels, h, w),
                torch.randn(b, groups, kernel_size, kernel_size, ho, wo))

    path = str(tmp_path / 'op.onnx')
    auto = torch.export.Dim.AUTO
    with torch.no_grad():
        torch.onnx.export(InvolutionOp(kernel_size, stride, dilation, padding),
                          inputs(2, h, w), path, dynamo=True, opset_version=deploy.ONNX_OPSET,
                          custom_translation_table=deploy.custom_translation_table(),
                          dynamic_shapes=({0: auto, 2: auto, 3: auto},
                                          {0: auto, 4: auto, 5: auto}), optimize=False)
    model = onnx.load(path)
    assert deploy.nonstandard_nodes(model) == []
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    for b, hh, ww in [(2, h, w), (1, 9, 16), (3, 17, 5)]:  # odd sizes with stride 2
        x, weight = inputs(b, hh, ww)
        out = session.run(None, dict(zip(names, (x.numpy(), weight.numpy()))))[0]
        expected = involution(x, weight, kernel_size, stride, dilation, padding).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def rednet26_export(tmp_path_factory):
    """RedNet-26 with the classification stem (3x3), dynamic batch and size, through the
    tool with --check, at an odd size."""
    path = str(tmp_path_factory.mktemp('onnx') / 'rednet26.onnx')
    status = _tool().main([osp.join(ROOT, 'configs', 'rednet26_64xb32_in1k.py'), '--part',
                           'backbone', '--out', path, '--shape', '67', '45', '--batch', '2',
                           '--dynamic', '--check'])
    return path, status


def test_rednet26_backbone_tool_check_passes(rednet26_export, capsys):
    path, status = rednet26_export
    assert status == 0
    model = onnx.load(path)
    assert deploy.input_dims(model) == ['batch', 3, 'height', 'width']
    assert deploy.nonstandard_nodes(model) == []
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get('', opsets.get('ai.onnx')) == deploy.ONNX_OPSET


def test_rednet26_backbone_dynamic_batch_and_size(rednet26_export):
    path, _ = rednet26_export
    cfg = deploy.load_config(osp.join(ROOT, 'configs', 'rednet26_64xb32_in1k.py'))
    torch.manual_seed(deploy.EXPORT_SEED)  # the tool's random weights
    module, _, _ = deploy.build_exportable(cfg, part='backbone')
    _assert_parity(module, path, [(2, 3, 67, 45), (1, 3, 64, 64), (4, 3, 33, 97)])


def test_rednet50_stem7_output_stride_8(tmp_path):
    """The segmentation form: stem involution 7x7, strides (1, 2, 1, 1) with dilated
    stages (1, 1, 2, 4), stride-2 involution on an odd size."""
    backbone = MODELS.build(dict(type='RedNet', depth=50, stem_kernel_size=7,
                                 strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                                 out_indices=(0, 1, 2, 3)))
    module = deploy.Backbone(backbone).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / 'rednet50_os8.onnx')
    model = deploy.export_onnx(module, torch.randn(1, 3, 75, 61), path)
    assert deploy.nonstandard_nodes(model) == []
    outs = deploy.torch_outputs(module, np.zeros((1, 3, 75, 61), np.float32))
    assert [o.shape[2:] for o in outs] == [(19, 16), (10, 8), (10, 8), (10, 8)]
    _assert_parity(module, path, [(1, 3, 75, 61)])


@pytest.mark.parametrize('config,outputs', [
    ('fpn_rednet50_neck_cityscapes.py', ['seg_logits']),
    ('retinanet_rednet50_neck_fpn_coco.py', [f'{k}{i}' for k in ('cls', 'reg')
                                             for i in range(5)]),
], ids=['semantic_fpn', 'retinanet'])
def test_config_exports_whole_network_with_dynamic_shapes(tmp_path, config, outputs):
    cfg = deploy.load_config(osp.join(ROOT, 'configs', config),
                             {'model.backbone.depth': 26})
    module, description, names = deploy.build_exportable(cfg)
    assert 'whole network' in description
    path = str(tmp_path / 'model.onnx')
    model = deploy.export_onnx(module, torch.randn(1, 3, 96, 128), path, names, dynamic=True)
    assert [o.name for o in model.graph.output] == outputs
    assert deploy.input_dims(model) == ['batch', 3, 'height', 'width']
    assert deploy.nonstandard_nodes(model) == []
    _assert_parity(module, path, [(1, 3, 96, 128), (2, 3, 128, 96)])


def test_two_stage_full_export_names_what_to_export_instead():
    cfg = deploy.load_config(osp.join(ROOT, 'configs', 'mask_rcnn_rednet50_fpn_coco.py'))
    with pytest.raises(deploy.ExportError, match=r'RoI stage of MaskRCNN.*--part auto'):
        deploy.build_exportable(cfg, part='full')
    module, description, names = deploy.build_exportable(cfg)
    assert description == 'MaskRCNN: backbone + neck + RPN head'
    outs = deploy.torch_outputs(module, np.zeros((1, 3, 64, 64), np.float32))
    assert len(outs) == len(names) == 15  # 5 FPN levels, 5 RPN score maps, 5 delta maps


def test_compare_reports_differences():
    ref = [np.array([[1.0, -4.0]], np.float32)]
    assert deploy.compare(ref, [ref[0].copy()]) == (0.0, 0.0)
    abs_diff, rel_diff = deploy.compare(ref, [np.array([[1.0, -3.0]], np.float32)])
    assert (abs_diff, rel_diff) == (1.0, 0.25)
    with pytest.raises(deploy.ExportError, match='output shape'):
        deploy.compare(ref, [np.zeros((2, 2), np.float32)])


def _fails(argv, capsys, match):
    with pytest.raises(SystemExit) as info:
        _tool().main(argv)
    assert info.value.code != 0
    message = str(info.value.code) + capsys.readouterr().err
    assert match in message, message


@pytest.mark.parametrize('argv,match', [
    (['configs/mask_rcnn_rednet50_fpn_coco.py', '--part', 'full'], 'cannot be exported'),
    (['configs/retinanet_rednet50_fpn_coco.py', 'missing.pth'],
     'checkpoint file not found: missing.pth'),
    (['configs/nonexistent.py'], 'config file not found'),
    (['configs/retinanet_rednet50_fpn_coco.py', '--shape', '0', '64'], '--shape takes two'),
    (['configs/retinanet_rednet50_fpn_coco.py', '--batch', '0'], '--batch must be'),
], ids=['two_stage_full', 'missing_checkpoint', 'missing_config', 'bad_shape', 'bad_batch'])
def test_tool_errors(tmp_path, capsys, argv, match):
    argv = [osp.join(ROOT, argv[0]), *argv[1:], '--out', str(tmp_path / 'x.onnx')]
    if '--shape' not in argv:
        argv += ['--shape', '64', '64']
    _fails(argv, capsys, match)


def test_tool_classifier_without_torchvision_says_to_export_the_backbone(tmp_path, capsys):
    if importlib.util.find_spec('torchvision') is not None:
        pytest.skip('torchvision installed: mmpretrain builds the classifier here')
    _fails([osp.join(ROOT, 'configs', 'rednet50_64xb32_in1k.py'), '--out',
            str(tmp_path / 'x.onnx'), '--shape', '64', '64'], capsys, '--part backbone')


def test_tool_exports_the_whole_classifier_where_mmpretrain_imports(tmp_path, capsys,
                                                                    mmpretrain_models):
    """The counterpart of the test above: RedNet-26's ImageClassifier to its 1000 logits,
    with --check against PyTorch."""
    path = str(tmp_path / 'rednet26_cls.onnx')
    status = _tool().main([osp.join(ROOT, 'configs', 'rednet26_64xb32_in1k.py'), '--out', path,
                           '--shape', '64', '64', '--batch', '2', '--check'])
    out = capsys.readouterr().out
    assert status == 0, out
    assert 'ImageClassifier: whole network' in out and 'onnxruntime: max abs diff' in out, out
    model = onnx.load(path)
    assert [o.name for o in model.graph.output] == ['logits']
    session = deploy.ort_session(path)
    logits = session.run(None, {session.get_inputs()[0].name:
                                np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert logits.shape == (2, 1000)


def test_backbone_part_loads_the_backbone_of_a_whole_model_checkpoint(tmp_path):
    cfg = deploy.load_config(osp.join(ROOT, 'configs', 'rednet26_64xb32_in1k.py'))
    source, _, _ = deploy.build_exportable(cfg, part='backbone')
    state = {f'backbone.{k}': v.clone().normal_() if v.is_floating_point() else v
             for k, v in source.backbone.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 2048)
    path = str(tmp_path / 'model.pth')
    torch.save({'state_dict': state}, path)
    module, _, _ = deploy.build_exportable(cfg, path, part='backbone')
    for key, value in module.backbone.state_dict().items():
        torch.testing.assert_close(value, state[f'backbone.{key}'], rtol=0, atol=0)
