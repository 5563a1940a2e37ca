"""tools/benchmark_model.py: a tiny run writes the JSON and plot the README quotes."""
import importlib.util
import json
import os

import pytest
import torch
import torch.nn as nn

TOOL = 'tools/benchmark_model.py'


def test_tiny_run_writes_json_and_plot(tmp_path, tools):
    out = tmp_path / 'models.json'
    result = tools.run_tool([TOOL, '--scenarios', 'infer_bs1', 'train_bs8', 'mask_rcnn_train',
                             'sem_fpn_train', '--models', 'rednet26', 'resnet50', '--repeats',
                             '1', '--threads', '1', '--image-size', '64', '--det-size', '64',
                             '--seg-size', '64', '96', '--out', str(out)], timeout=900)
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    assert data['command'].endswith(f'--out {out}') and data['image_size'] == 64
    results = data['results']
    assert set(results) == {'infer_bs1', 'train_bs8', 'mask_rcnn_train', 'sem_fpn_train'}
    assert data['seg_size'] == [64, 96]
    for scenario in ('infer_bs1', 'train_bs8'):
        res = results[scenario]
        assert set(res['time_ms']) == set(res['peak_memory_mib']) == {'rednet26', 'resnet50'}
        (row,) = res['ratios']
        assert (row['rednet'], row['resnet']) == ('rednet26', 'resnet50')
        assert row['time_ratio'] == pytest.approx(
            res['time_ms']['rednet26'] / res['time_ms']['resnet50'])
        assert all(v > 0 for v in res['peak_memory_mib'].values())
    saved = results['train_bs8']['saved_for_backward_mib']
    assert set(saved) == {'rednet26', 'resnet50'} and saved['rednet26'] < saved['resnet50']
    (row, ) = results['train_bs8']['ratios']
    assert row['saved_for_backward_ratio'] == pytest.approx(saved['rednet26'] / saved['resnet50'])
    assert 'saved_for_backward_mib' not in results['infer_bs1']
    # training holds gradients and momentum: more memory than inference
    assert (results['train_bs8']['peak_memory_mib']['resnet50']
            > results['infer_bs1']['peak_memory_mib']['resnet50'])
    (det,) = results['mask_rcnn_train']['ratios']
    assert (det['rednet'], det['resnet']) == ('mask_rcnn_rednet50', 'mask_rcnn_resnet50')
    (seg,) = results['sem_fpn_train']['ratios']
    assert (seg['rednet'], seg['resnet']) == ('sem_fpn_rednet50', 'sem_fpn_resnet50')
    assert all(v > 0 for v in results['sem_fpn_train']['peak_memory_mib'].values())
    assert (tmp_path / 'models.png').stat().st_size > 0


@pytest.mark.slow  # compiles RedNet-26 and ResNet-50 for inference
def test_compiled_run_reports_compiled_and_eager_times_and_the_isa(tmp_path, tools):
    out = tmp_path / 'compiled.json'
    result = tools.run_tool([TOOL, '--scenarios', 'infer_bs1_compiled', '--models', 'rednet26',
                             'resnet50', '--repeats', '1', '--threads', '1', '--image-size',
                             '64', '--inductor-options', 'layout_optimization=False',
                             '--no-memory', '--no-plot', '--out', str(out)], timeout=900)
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    assert data['inductor_options'] == {'layout_optimization': False}
    res = data['results']['infer_bs1_compiled']
    models = {'rednet26', 'resnet50'}
    assert set(res['time_ms']) == set(res['eager_time_ms']) == set(res['first_call_s']) == models
    for name in models:
        assert res['compiled_over_eager'][name] == pytest.approx(
            res['time_ms'][name] / res['eager_time_ms'][name])
    (row,) = res['ratios']
    assert row['time_ratio'] == pytest.approx(
        res['time_ms']['rednet26'] / res['time_ms']['resnet50'])
    machine = data['machine']
    assert machine['cpu'] and machine['aten_cpu_capability'] and machine['inductor_vec_isa']
    assert 'peak_memory_mib' not in res


def test_batch_size_in_scenario_name_and_autocast(tmp_path, tools):
    out = tmp_path / 'amp.json'
    result = tools.run_tool([TOOL, '--scenarios', 'infer_bs2', 'train_bs3', '--models',
                             'rednet26', 'resnet50', '--repeats', '1', '--threads', '1',
                             '--image-size', '64', '--amp', 'bfloat16', '--no-memory',
                             '--no-plot', '--out', str(out)], timeout=600)
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    assert data['amp'] == 'bfloat16' and data['device'] == 'cpu'
    assert data['resnet'] in ('mmdet', 'torchvision')
    assert set(data['results']) == {'infer_bs2', 'train_bs3'}


@pytest.mark.parametrize('args,message', [
    (['--repeats', '0'], '--repeats must be at least 1'),
    (['--scenarios', 'train_bs8_fused'], "unknown scenario 'train_bs8_fused'"),
    (['--scenarios', 'train_bs8_fused_compiled'], "unknown scenario 'train_bs8_fused_compiled'"),
    (['--scenarios', 'infer_bs8_compiled_fused'], "unknown scenario 'infer_bs8_compiled_fused'"),
    (['--scenarios', 'infer_bs0'], "unknown scenario 'infer_bs0'"),
    (['--scenarios', 'infer'], "unknown scenario 'infer'"),
    (['--amp', 'float16', '--scenarios', 'mask_rcnn_train'], 'needs --device cuda'),
    (['--amp', 'float16', '--scenarios', 'mask_rcnn_train_compiled'], 'needs --device cuda'),
    (['--amp', 'float16', '--scenarios', 'sem_fpn_train'], 'sem_fpn_train needs --device cuda'),
    (['--scenarios', 'mask_rcnn_train_fused'], "unknown scenario 'mask_rcnn_train_fused'"),
    (['--scenarios', 'mask_rcnn_infer'], "unknown scenario 'mask_rcnn_infer'"),
    (['--det-size', '16'], '--det-size and --seg-size at least 64'),
    (['--seg-size', '512', '32'], '--det-size and --seg-size at least 64'),
    (['--seg-size', '512'], '--seg-size: expected 2 arguments'),
    (['--scenarios', 'sem_fpn_infer'], "unknown scenario 'sem_fpn_infer'"),
    (['--models', 'vgg16'], "invalid choice: 'vgg16'"),
    (['--threads', '0'], '--threads must be positive'),
    (['--inductor-options', 'layout_optimization'], 'expected KEY=VALUE'),
    (['--inductor-options', 'no_such_setting=1'], "has no setting 'no_such_setting'"),
    (['--inductor-options', 'layout_optimization=no'], 'must be a Python literal'),
])
def test_bad_arguments(args, message, tools):
    result = tools.run_tool([TOOL, *args])
    assert result.returncode == 2 and message in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without CUDA')
def test_cuda_mode_without_a_gpu_says_so(tools):
    result = tools.run_tool([TOOL, '--device', 'cuda'])
    assert result.returncode == 2 and 'no CUDA device is available' in result.stdout


def _load_tool(root):
    spec = importlib.util.spec_from_file_location('benchmark_model_tool',
                                                  os.path.join(root, TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


class _TwoViews(nn.Module):
    def forward(self, x):
        y = x * 2  # saves nothing: the gradient is a constant times the incoming one
        return y[:, :1] * y[:, 1:]  # saves two views of y


def test_saved_bytes_count_each_storage_once_and_no_parameters(tools):
    tool = _load_tool(tools.ROOT)
    x = torch.randn(2, 3, 5, 5)
    conv_relu = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    # the conv keeps x (and its weight, a parameter), the ReLU its output
    assert tool.saved_for_backward_bytes(conv_relu, x) == x.nbytes + 2 * 4 * 5 * 5 * 4
    assert tool.saved_for_backward_bytes(_TwoViews(), x.requires_grad_()) == x.nbytes


@pytest.mark.slow  # inductor compiles a conv + ReLU forward and backward
def test_saved_bytes_of_a_compiled_model_are_what_its_graphs_save(tools):
    """The compiled scenarios' figure: the hooks see the tensors the compiled graph keeps
    (the partitioner may keep fewer than eager mode, never none: the conv needs its input)."""
    tool = _load_tool(tools.ROOT)
    x = torch.randn(2, 3, 5, 5)
    conv_relu = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    compiled = tool.saved_for_backward_bytes(torch.compile(conv_relu, fullgraph=True), x)
    assert x.nbytes <= compiled <= tool.saved_for_backward_bytes(conv_relu, x)


def test_a_resnet_that_does_not_import_is_named(tools):
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip('torchvision imports here; the message is for machines without it')
    result = tools.run_tool([TOOL, '--resnet', 'torchvision'])
    assert result.returncode == 2 and '--resnet torchvision: torchvision does not import here' \
        in result.stdout


def test_compiled_scenarios_time_each_model_compiled_and_eager(tools):
    tool = _load_tool(tools.ROOT)
    args = tool.parse_args(['--scenarios', 'train_bs8_compiled', 'infer_bs2_fused_compiled',
                            '--models', 'rednet50', 'resnet50'])
    assert tool.backbone_scenario('infer_bs2_fused_compiled') == ('infer', 2, True, True)
    assert tool.backbone_scenario('train_bs8') == ('train', 8, False, False)
    assert tool.scenario_methods('train_bs8_compiled', args) == {
        'rednet50': ('rednet50', 'train_bs8_compiled'),
        'resnet50': ('resnet50', 'train_bs8_compiled'),
        'rednet50_eager': ('rednet50', 'train_bs8'), 'resnet50_eager': ('resnet50', 'train_bs8')}
    assert tool.scenario_methods('infer_bs1', args) == {
        'rednet50': ('rednet50', 'infer_bs1'), 'resnet50': ('resnet50', 'infer_bs1')}
    assert tool.scenario_methods('mask_rcnn_train_compiled', args) == {
        'mask_rcnn_rednet50': ('mask_rcnn_rednet50', 'mask_rcnn_train_compiled'),
        'mask_rcnn_resnet50': ('mask_rcnn_resnet50', 'mask_rcnn_train_compiled'),
        'mask_rcnn_rednet50_eager': ('mask_rcnn_rednet50', 'mask_rcnn_train'),
        'mask_rcnn_resnet50_eager': ('mask_rcnn_resnet50', 'mask_rcnn_train')}
    assert tool.scenario_methods('sem_fpn_train', args) == {
        'sem_fpn_rednet50': ('sem_fpn_rednet50', 'sem_fpn_train'),
        'sem_fpn_resnet50': ('sem_fpn_resnet50', 'sem_fpn_train')}


@pytest.mark.parametrize('model,scenario,heads', [
    ('mask_rcnn_rednet50', 'mask_rcnn_train', ('rpn_head', 'roi_head')),
    ('sem_fpn_rednet50', 'sem_fpn_train', ('decode_head',)),
])
def test_compiled_mm_model_compiles_backbone_and_neck_only(model, scenario, heads, tools):
    tool = _load_tool(tools.ROOT)
    args = tool.parse_args(['--scenarios', scenario + '_compiled', '--det-size', '64',
                            '--seg-size', '64', '64'])
    compiled = tool.training_mm_model(model, scenario + '_compiled', args)
    eager = tool.training_mm_model(model, scenario, args)
    assert compiled.training
    # nn.Module.compile keeps the module (and its state_dict keys), compiling its __call__
    assert compiled.backbone._compiled_call_impl is not None
    assert compiled.neck._compiled_call_impl is not None
    for head in heads:
        assert getattr(compiled, head)._compiled_call_impl is None
    assert eager.backbone._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_an_openmmlab_scenario_whose_codebase_does_not_import_is_named(tools, monkeypatch,
                                                                       capsys):
    tool = _load_tool(tools.ROOT)
    real = tool._imports
    monkeypatch.setattr(tool, '_imports', lambda module: module != 'mmseg.models' and real(module))
    with pytest.raises(SystemExit):
        tool.parse_args(['--scenarios', 'infer_bs1', 'sem_fpn_train_compiled'])
    assert 'sem_fpn_train needs mmseg, which does not import here' in capsys.readouterr().err
    assert tool.parse_args(['--scenarios', 'mask_rcnn_train']).scenarios == ['mask_rcnn_train']


def test_segmentor_is_built_for_one_process_without_pretraining(tools):
    tool = _load_tool(tools.ROOT)
    args = tool.parse_args(['--scenarios', 'sem_fpn_train', '--seg-size', '64', '96'])
    for name in ('sem_fpn_rednet50', 'sem_fpn_resnet50'):
        model = tool.build_mm_model('sem_fpn_train', name, args)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        assert model.data_preprocessor.size == (64, 96)
    assert type(model.backbone).__name__ == 'ResNetV1c'  # the stock config's ResNet


def test_saved_for_backward_tool_writes_each_mode_batch_and_ratio(tmp_path, tools):
    out = tmp_path / 'saved.json'
    result = tools.run_tool(['tools/saved_for_backward.py', '--models', 'rednet26', 'resnet50',
                             '--batches', '1', '2', '--modes', 'eager', '--image-size', '64',
                             '--out', str(out)], timeout=600)
    assert result.returncode == 0, result.stdout
    data = json.loads(out.read_text())
    assert data['command'].endswith(f'--out {out}') and data['machine']['cpu']
    saved = data['saved_for_backward_mib']['eager']
    assert set(saved) == {'1', '2'} and set(saved['2']) == {'rednet26', 'resnet50'}
    assert 0 < saved['2']['rednet26'] < saved['2']['resnet50']
    assert [(r['batch'], r['rednet'], r['resnet']) for r in data['ratios']] == [
        (1, 'rednet26', 'resnet50'), (2, 'rednet26', 'resnet50')]
    assert data['ratios'][1]['ratio'] == pytest.approx(
        saved['2']['rednet26'] / saved['2']['resnet50'])


@pytest.mark.parametrize('option,message', [
    (['--batches', '2', '0'], '--batches must be positive'),
    (['--threads', '0'], '--threads must be positive'),
    (['--image-size', '16'], '--image-size must be at least 32')])
def test_saved_for_backward_tool_refuses_bad_options(tools, option, message):
    result = tools.run_tool(['tools/saved_for_backward.py', '--modes', 'eager', *option],
                            timeout=300)
    assert result.returncode == 2 and message in result.stdout, result.stdout
