"""Tests of tools/compare_conv_involution.py (conv vs. involution on small datasets)."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'compare_conv_involution.py')


def _load_tool():
    # tools/ is not a package; load the script by path under a name of its own.
    spec = importlib.util.spec_from_file_location('compare_conv_involution_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cci = _load_tool()


def _hand_count_conv(c_in, n_cls, k=3, w1=16, w2=32):
    stem = 3 * 3 * c_in * w1 + 2 * w1            # shared 3x3 conv stem (no bias) + BN
    # four KxK convs without bias, four BN (weight + bias), one Linear with bias
    convs = k * k * (w1 * w1 + w1 * w1 + w1 * w2 + w2 * w2)
    return stem + convs + 2 * (w1 + w1 + w2 + w2) + w2 * n_cls + n_cls


def _hand_count_involution(c_in, n_cls, k=3, w1=16, w2=32, gc=4, r=4):
    def inv(c):
        mid, groups = c // r, c // gc
        conv1 = c * mid + 2 * mid                # 1x1 without bias + its BN
        conv2 = mid * k * k * groups + k * k * groups  # biased 1x1 to K*K*G
        return conv1 + conv2

    stem = 3 * 3 * c_in * w1 + 2 * w1            # the same stem as the conv variant
    one_by_one = w1 * w2                         # only where the channel count changes
    return (stem + one_by_one + 2 * inv(w1) + 2 * inv(w2) + 2 * (w1 + w1 + w2 + w2)
            + w2 * n_cls + n_cls)


@pytest.mark.parametrize('c_in,n_cls,size', [(1, 10, 8), (1, 6, 16), (3, 5, 17)])
def test_both_variants_build_and_count_parameters(c_in, n_cls, size):
    conv = cci.SmallNet(c_in, n_cls, 'conv')
    inv = cci.SmallNet(c_in, n_cls, 'involution')
    assert cci.count_parameters(conv) == _hand_count_conv(c_in, n_cls)
    assert cci.count_parameters(inv) == _hand_count_involution(c_in, n_cls)
    for variant, model in (('conv', conv), ('involution', inv)):
        assert cci.count_parameters(model) == cci.expected_parameters(variant, c_in, n_cls)
        out = model.eval()(torch.randn(2, c_in, size, size))
        assert out.shape == (2, n_cls)
    # the involution variant really uses the project's module, with the stated groups
    from involution_mm.ops import Involution
    invs = [m for m in inv.modules() if isinstance(m, Involution)]
    assert [m.groups for m in invs] == [4, 4, 8, 8]
    spatial_convs = [m for m in inv.modules()
                     if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial_convs == [inv.stem[0]]  # the shared 3x3 stem is the only one
    assert conv.stem[0].weight.shape == inv.stem[0].weight.shape == (16, c_in, 3, 3)


def test_default_digits_counts_match_docstring():
    assert _hand_count_conv(1, 10) == 19130
    assert _hand_count_involution(1, 10) == 3554
    assert '19,130' in cci.__doc__ and '3,554' in cci.__doc__


@pytest.mark.parametrize('swap_stem', [False, True])
def test_other_configuration_counts(swap_stem):
    kw = dict(widths=(8, 16, 24), kernel_size=5, group_channels=8, reduction_ratio=2,
              swap_stem=swap_stem)
    for variant in cci.VARIANTS:
        model = cci.SmallNet(3, 7, variant, **kw)
        assert cci.count_parameters(model) == cci.expected_parameters(variant, 3, 7, **kw)
        assert model(torch.randn(2, 3, 12, 12)).shape == (2, 7)


def test_swapped_stem_counts():
    # --swap-stem: the stem becomes spatial(1 -> 16): a 3x3 conv (the same as the shared
    # stem for K=3), or a 1x1 conv 1 -> 16 plus an Involution(16)
    conv = cci.SmallNet(1, 10, 'conv', swap_stem=True)
    inv = cci.SmallNet(1, 10, 'involution', swap_stem=True)
    assert cci.count_parameters(conv) == _hand_count_conv(1, 10)
    inv16 = 16 * 4 + 2 * 4 + 4 * 9 * 4 + 9 * 4
    assert cci.count_parameters(inv) == (_hand_count_involution(1, 10) - (9 * 16 + 2 * 16)
                                         + 1 * 16 + inv16 + 2 * 16)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
                   for m in inv.modules())


@pytest.mark.parametrize('variant', ['conv', 'involution'])
def test_few_training_steps_decrease_loss(variant):
    data = cci.load_dataset('digits', max_train=64, max_test=16)
    torch.manual_seed(0)
    model = cci.SmallNet(1, 10, variant)
    losses = cci.train_steps(model, data['x_train'][:32], data['y_train'][:32], steps=12,
                             lr=1e-2)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0], losses
    assert np.mean(losses[6:]) < np.mean(losses[:6]), losses


def test_train_one_reports_measurements():
    data = cci.load_dataset('shapes', shapes_per_class=20)
    r = cci.train_one(data, 'involution', 0, torch.device('cpu'), epochs=2, batch_size=16,
                      lr=3e-3, weight_decay=1e-4, widths=(8, 16), kernel_size=3,
                      group_channels=4, reduction_ratio=4)
    assert 0.0 <= r['test_acc'] <= 1.0 and len(r['epoch_times_s']) == 2
    assert r['params'] == cci.expected_parameters('involution', 1, 6, widths=(8, 16))


def test_shapes_dataset_is_deterministic_and_balanced():
    x1, y1, classes = cci.make_shapes(10, 16, seed=3)
    x2, y2, _ = cci.make_shapes(10, 16, seed=3)
    x3, _, _ = cci.make_shapes(10, 16, seed=4)
    assert x1.shape == (60, 1, 16, 16) and x1.dtype == np.float32
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert classes == list(cci.SHAPE_CLASSES)
    assert np.bincount(y1).tolist() == [10] * 6
    data = cci.load_dataset('shapes', shapes_per_class=20)
    assert len(data['y_train']) + len(data['y_test']) == 120
    assert abs(float(data['x_train'].mean())) < 1e-4


@pytest.mark.parametrize('argv,message', [
    (['--datasets', 'mnist'], 'invalid choice'),
    (['--epochs', '0'], 'positive integer'),
    (['--epochs', '-3'], 'positive integer'),
    (['--kernel-size', '4'], 'odd'),
    (['--widths', '16', '30'], 'divisible'),
    (['--seeds', '-1'], 'non-negative'),
    (['--shapes-size', '6'], 'at least 8'),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cci.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cci.parse_args(['--device', 'cuda'])
    assert exc.value.code == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_bad_names_raise_value_error():
    with pytest.raises(ValueError, match='unknown dataset'):
        cci.load_dataset('mnist')
    with pytest.raises(ValueError, match='unknown variant'):
        cci.SmallNet(1, 10, 'attention')


def test_quick_cli_writes_json_markdown_and_png(tmp_path):
    out_dir = tmp_path / 'out'
    proc = subprocess.run([sys.executable, TOOL, '--quick', '--out-dir', str(out_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MPLBACKEND='Agg'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '| Dataset | Model |' in proc.stdout

    results = json.loads((out_dir / 'results.json').read_text())
    for key in ('config', 'machine', 'datasets', 'architectures', 'results',
                'table_markdown', 'notes', 'total_time_s'):
        assert key in results
    for key in ('platform', 'cpu', 'torch', 'torch_threads', 'command',
                'involution_extension'):
        assert key in results['machine']
    assert '--quick' in results['machine']['command']
    assert set(results['datasets']) == {'digits', 'shapes'}
    rows = results['results']
    assert {(r['dataset'], r['variant']) for r in rows} == {
        (d, v) for d in ('digits', 'shapes') for v in ('conv', 'involution')}
    for r in rows:
        assert r['params'] == r['params_expected'] > 0
        assert r['device'] == 'cpu' and len(r['runs']) == 1
        for key in ('acc_mean', 'acc_std', 'acc_min', 'acc_max', 'epoch_time_mean_s'):
            assert key in r['summary']
        assert 0.0 <= r['summary']['acc_mean'] <= 100.0
        assert r['summary']['epoch_time_mean_s'] > 0
    by = {(r['dataset'], r['variant']): r['params'] for r in rows}
    assert by[('digits', 'involution')] < by[('digits', 'conv')]

    assert (out_dir / 'results.md').read_text().count('\n| ') >= 5
    png = (out_dir / 'accuracy_vs_params.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
