"""torch.compile of RedNet: one graph (fullgraph=True, no graph breaks) whose outputs,
gradients and BN statistics are the eager ones, with the recomputing chains on."""
import copy
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch.nn.modules.batchnorm import _BatchNorm

from involution_mm.models import RedNet
from involution_mm.models.backbones.rednet import Bottleneck

TESTS = os.path.dirname(os.path.abspath(__file__))


def _small_rednet(**kwargs):
    """Stem (both chains), a stage of one block and a stride-2 stage of two blocks
    (downsample, stride-2 involution): every kind of chain RedNet builds, in little time."""
    torch.manual_seed(0)
    model = RedNet(26, num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
                   stem_channels=32, base_channels=16, stem_kernel_size=7, **kwargs)
    model.init_weights()
    for m in model.modules():  # away from 1 and 0 (bn3 is zero-initialised): every branch
        if isinstance(m, _BatchNorm):  # carries gradient
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def _train_step(forward, model, x):
    """One training forward and backward of ``model`` by ``forward`` (the model itself or
    its compiled form): outputs, gradients and buffers."""
    x = x.detach().clone().requires_grad_()
    outs = forward(x)
    sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        for out in outs).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    buffers = {name: b.double() for name, b in model.named_buffers()}
    return dict(outs=outs, x_grad=x.grad, **grads, **buffers)


def _assert_close_at_scale(actual, expected, what, rel=1e-5):
    """Within ``rel`` of the tensor's largest magnitude: float32 rounding through the
    network grows with the values (unnormalised eval-mode outputs reach 1e5 here), while a
    wrong kernel, layout or recomputation errs by the values' own size."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rel * scale, f'{what}: max error {error:.3g} at scale {scale:.3g}'


def _assert_steps_close(actual, expected, keys):
    """:func:`_assert_close_at_scale` for the entries ``keys`` of two :func:`_train_step`
    results, each of the outputs on its own."""
    for what in keys:
        if what == 'outs':
            for i, (a, e) in enumerate(zip(actual[what], expected[what])):
                _assert_close_at_scale(a, e, f'output {i}')
        else:
            _assert_close_at_scale(actual[what], expected[what], what)


@pytest.mark.slow  # compiles a small RedNet's forward and backward with inductor
def test_compiled_training_is_one_graph_with_the_eager_results():
    """Also: compiled, each chain is its two ops (forward, backward), as in eager mode, so
    the compiler neither saves nor recomputes more than the eager chain; the only
    convolution in inductor's graphs is the stem's first 3x3 conv (the second closes a
    chain), forward and backward."""
    eager = _small_rednet().train()
    assert eager.recompute_activations
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True)  # raises on a graph break
    x = torch.randn(2, 3, 64, 48)
    ops = Counter()  # of the graphs inductor compiles (a cache hit would skip the pass)

    def count_ops(graph):
        ops.update(node.target for node in graph.nodes if node.op == 'call_function')
    expected = _train_step(eager, eager, x)
    with inductor_config.patch(post_grad_custom_post_pass=count_ops, fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):
        actual = _train_step(compiled, twin, x)
    chains = 2 + 3  # the stem's two, one per bottleneck
    assert ops[torch.ops.involution_mm.recomputed_chain.default] == chains
    assert ops[torch.ops.involution_mm.recomputed_chain_backward.default] == chains
    assert ops[torch.ops.aten.convolution.default] == 1
    assert ops[torch.ops.aten.convolution_backward.default] == 1
    assert actual.keys() == expected.keys()
    # outputs, gradients, BN statistics (updated once per step)
    _assert_steps_close(actual, expected, expected.keys())


@pytest.mark.slow  # compiles a small RedNet's forward and backward with inductor
def test_compiled_detection_backbone_with_frozen_stem_and_eval_norms_is_eager():
    """The detection configs' backbone in training (stem and first stage frozen, every BN in
    eval mode), compiled in place as tools/benchmark_model.py's mask_rcnn_train_compiled
    compiles it: the eager outputs and gradients, none for the frozen parameters."""
    eager = _small_rednet(frozen_stages=1, norm_eval=True).train()
    twin = copy.deepcopy(eager)
    twin.compile(fullgraph=True)  # raises on a graph break
    x = torch.randn(2, 3, 64, 48)
    expected, actual = _train_step(eager, eager, x), _train_step(twin, twin, x)
    frozen = {what for what, value in expected.items() if value is None}
    assert frozen and frozen == {what for what, value in actual.items() if value is None}
    assert all(name.startswith(('stem.', 'layer1.')) for name in frozen)
    _assert_steps_close(actual, expected, expected.keys() - frozen)


def _saved_activations(forward, model, x):
    """The tensors (one per storage, parameters left out) that a forward of ``model`` by
    ``forward`` saves for backward, and the gradients of its parameters and ``x``."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in own:
            saved[tensor.untyped_storage().data_ptr()] = tensor
        return tensor
    x = x.detach().clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return list(saved.values()), dict(x_grad=x.grad, **grads)


@pytest.mark.slow  # compiles two bottlenecks' forward and backward with inductor
def test_compiled_blocks_keep_a_relu_output_that_a_1x1_conv_reads_not_its_mask():
    """The first block's output (a ReLU's), which the second block's 1x1 convs read, is saved
    itself as in eager mode; compiled, only the last ReLU, whose output nothing else keeps,
    saves a mask. No more bytes than eager mode, the eager gradients."""
    torch.manual_seed(0)
    eager = nn.Sequential(Bottleneck(64, 64), Bottleneck(64, 64)).train()
    for m in eager.modules():
        if isinstance(m, _BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    twin = copy.deepcopy(eager)
    x = torch.randn(2, 64, 12, 10)
    eager_saved, expected = _saved_activations(eager, eager, x)
    saved, actual = _saved_activations(torch.compile(twin, fullgraph=True), twin, x)
    assert sum(t.dtype == torch.bool for t in saved) <= 1
    assert (sum(t.untyped_storage().nbytes() for t in saved)
            <= sum(t.untyped_storage().nbytes() for t in eager_saved))
    for what in expected:
        _assert_close_at_scale(actual[what], expected[what], what)


@pytest.mark.slow
def test_compiled_inference_is_one_graph_with_the_eager_outputs():
    model = _small_rednet().eval()
    x = torch.randn(2, 3, 64, 48)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    with torch.no_grad():
        expected = model(x)
        actual = torch.compile(model, fullgraph=True)(x)
    for i, (a, e) in enumerate(zip(actual, expected)):
        _assert_close_at_scale(a, e, f'output {i}')


@pytest.mark.parametrize('isa', ['avx2', 'default'])
def test_a_forced_isa_has_its_own_inductor_cache(isa):
    """conftest.py: a run under ATEN_CPU_CAPABILITY must not reuse graphs that inductor cached
    for another vector ISA (its cache key leaves the ISA out)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('TORCHINDUCTOR_CACHE_DIR', 'ATEN_CPU_CAPABILITY')}
    code = ('import os, sys; sys.path.insert(0, sys.argv[1]); import conftest; '
            'from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir; '
            'print(cache_dir()); print(default_cache_dir())')
    for forced in ({}, {'ATEN_CPU_CAPABILITY': isa}):
        out = subprocess.run([sys.executable, '-c', code, TESTS], env={**env, **forced},
                             capture_output=True, text=True, check=True).stdout.split()
        used, default = out[-2:]
        assert (used == default) == (not forced), (forced, used)
        if forced:
            assert used.endswith('_' + isa)



@pytest.mark.slow  # two runs of tools/train.py, one compiling the segmentor's train step
def test_config_compile_key_trains_as_eager(tmp_path, synthetic_data, tools):
    """mmengine's ``compile`` config key (``--cfg-options compile=True``; mmdet's and mmseg's
    tools/train.py have no flag for it) on the Semantic FPN RedNet demo config: the first
    iteration's loss equals the eager run's. The aot_eager backend keeps the test short:
    it traces the model as inductor does (Dynamo, AOTAutograd) without generating C++,
    which the tests above cover for RedNet."""
    opts = (tools.seg_data_options(synthetic_data) + tools.schedule_options(1)
            + ['model.backbone.depth=26'])
    losses = {}
    for run, extra in (('eager', []), ('compiled', ['compile.backend=aot_eager'])):
        result = tools.run_tool(['tools/train.py', tools.SEG_DEMO, '--work-dir',
                                 str(tmp_path / run), '--cfg-options', *opts, *extra],
                                timeout=900)
        assert result.returncode == 0, result.stdout[-4000:]
        assert ('Model has been "compiled"' in result.stdout) == (run == 'compiled')
        found = re.search(r'Iter\(train\) \[1/1\].*? loss: ([\d.]+)', result.stdout)
        assert found, result.stdout[-3000:]
        losses[run] = float(found.group(1))
    assert losses['compiled'] == pytest.approx(losses['eager'], rel=1e-3)
