"""Chains of layers whose intermediate activations are recomputed in backward.

In training every BN and conv keeps its input for backward and every ReLU its output: along
BN -> ReLU -> conv that is three tensors of one size, two of them elementwise functions of
the first. :func:`make_chain` turns a sequence of layers (BatchNorm2d/SyncBatchNorm, ReLU,
Conv2d, MaxPool2d, mmcv ConvModules of these, and :class:`~involution_mm.ops.Involution`
with its kernel branch) into one autograd node that keeps only the chain's input and the
BN statistics, recomputes the intermediate tensors in backward and applies each layer's
derivative there. The last layer's output is not recomputed: a chain ending in a conv
costs no extra GEMM. Values and gradients are those of the layers called one by one, to
rounding: the forward computes each BN with ATen's batch-norm kernel, as BatchNorm2d does
(its statistics in one call, several times faster than ``var_mean``), the recomputation
normalises with the saved mean and inverse deviation by an elementwise formula.

The chain is a pair of custom ops (:func:`recomputed_chain` and its backward) with an
autograd formula, the same in eager mode and under torch.compile, which calls them as they
are: compiled training keeps what eager training keeps.
"""
import ast
import functools
from typing import List, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch.nn.modules.utils import _pair

from .involution import HAS_EXTENSION, involution
from .pointwise import BATCH_NORMS, _without_hooks, add_into, conv1x1, conv1x1_backward
from .pooling import ceil_avg_pool, ceil_avg_pool_backward, max_pool
from .reference import canonical_weight, default_padding

#: the dtypes a chain runs in; others (and autocast) take the layers one by one
CHAIN_DTYPES = (torch.float32, torch.float64)


def _is_pointwise(weight, stride, padding, dilation, groups):
    return (weight.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
            and dilation == (1, 1) and groups == 1)


class _Pass:
    """One run of a chain's stages: the forward, or its recomputation in backward, which
    also records each stage's derivative in ``records``: a closure over what it needs,
    called as ``record(grad, accumulate=None)``, which returns the gradient of the stage's
    input, added into ``accumulate`` (overwriting it) where that is given."""

    def __init__(self, tensors, stats=None, needs_grad=None):
        self.tensors = tensors
        self.index = 0
        self.stats = None if stats is None else iter(stats)
        self.new_stats = []
        self.recording = needs_grad is not None
        self.needs_grad = needs_grad
        self.grads = [None] * len(tensors)
        self.records = []

    def _take(self, n):
        first = self.index
        self.index += n
        return first, self.tensors[first:self.index]

    def _record(self, derivative):
        """Records a derivative that computes its gradient apart; the sum with
        ``accumulate`` is one more pass."""
        self.records.append(
            lambda grad, accumulate=None: add_into(accumulate, derivative(grad)))

    def run(self, stages, x, need_output=True):
        last = len(stages) - 1
        for i, stage in enumerate(stages):
            x = getattr(self, '_' + stage[0])(stage, x, fresh=i > 0,
                                              need_output=need_output or i < last)
        return x

    def _bn(self, stage, x, fresh, need_output):
        _, eps, batch_stats = stage
        first, (weight, bias, running_mean, running_var) = self._take(4)
        if not batch_stats:
            mean, var = running_mean, running_var
            invstd = torch.rsqrt(var + eps)
        elif self.stats is not None:
            mean, invstd = next(self.stats), next(self.stats)
        else:
            count = x.numel() // x.shape[1]
            if count <= 1:  # what BatchNorm says
                raise ValueError('Expected more than 1 value per channel when training, got '
                                 f'input size {tuple(x.shape)}')
            # with momentum 1 the kernel writes the batch's mean and unbiased variance into
            # the zeroed buffers, exactly as it updates BatchNorm's running ones
            batch_mean, unbiased_var = x.new_zeros((2, x.shape[1])).unbind()
            out, mean, invstd = torch.ops.aten._native_batch_norm_legit(
                x, weight, bias, batch_mean, unbiased_var, True, 1.0, eps)
            self.new_stats.append((mean, invstd, unbiased_var))
            return out
        if self.recording:
            needs = (self.needs_grad[first] and weight is not None,
                     self.needs_grad[first + 1] and bias is not None)

            def backward(grad):
                args = (None, None, mean, invstd) if batch_stats else (mean, var, None, None)
                grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                    grad, x, weight, *args, batch_stats, eps, [True, *needs])
                self.grads[first:first + 2] = grad_weight, grad_bias
                return grad_x
            self._record(backward)
        if not need_output:
            return None
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        return torch.addcmul(shift[:, None, None], x, scale[:, None, None])

    def _relu(self, stage, x, fresh, need_output):
        # a stage's output is its own to overwrite
        out = x.relu_() if fresh else x.relu()
        if self.recording:
            self._record(lambda grad: torch.ops.aten.threshold_backward(grad, out, 0))
        return out

    def _conv(self, stage, x, fresh, need_output):
        _, stride, padding, dilation, groups = stage
        first, (weight, bias) = self._take(2)
        pointwise = _is_pointwise(weight, stride, padding, dilation, groups)
        if self.recording:
            mask = [True, self.needs_grad[first], self.needs_grad[first + 1] and bias is not None]

            def backward(grad, accumulate=None):
                if pointwise:  # the input gradient's GEMM adds into ``accumulate``
                    grad_x, grad_weight, grad_bias = conv1x1_backward(grad, x, weight, mask,
                                                                      accumulate)
                else:
                    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                        grad, x, weight, None if bias is None else [bias.shape[0]], stride,
                        padding, dilation, False, [0, 0], groups, mask)
                    grad_x = add_into(accumulate, grad_x)
                self.grads[first:first + 2] = grad_weight, grad_bias
                return grad_x
            self.records.append(backward)
        if not need_output:
            return None
        if pointwise:
            return conv1x1(x, weight, bias)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    def _maxpool(self, stage, x, fresh, need_output):
        _, kernel_size, stride, padding, dilation, ceil_mode = stage
        if not self.recording:
            return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
        out, indices = max_pool(x, kernel_size, stride, padding, dilation, ceil_mode,
                                return_indices=True)
        self._record(lambda grad: torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, kernel_size, stride, padding, dilation, ceil_mode, indices))
        return out

    def _involution(self, stage, x, fresh, need_output):
        _, kernel_size, stride, dilation, padding, branch = stage
        outer, self.records = self.records, []
        kernel = self.run(branch, x if stride == 1 else ceil_avg_pool(x, stride))
        branch_records, self.records = self.records, outer
        hyper = (kernel_size, stride, dilation, padding)
        if self.recording:
            def backward(grad):
                weight = canonical_weight(kernel, kernel_size)
                grad_x = torch.ops.involution_mm.involution_grad_input(
                    grad, weight, list(x.shape[2:]), *hyper)
                grad_kernel = torch.ops.involution_mm.involution_grad_weight(
                    grad, x, *hyper, weight.shape[1]).flatten(1, 3)
                # x feeds the op and the branch: the branch's first stage adds its input
                # gradient into the op's (the op's output is this closure's own)
                while len(branch_records) > 1:
                    grad_kernel = branch_records.pop()(grad_kernel)
                if stride == 1:
                    return branch_records.pop()(grad_kernel, accumulate=grad_x)
                grad_kernel = branch_records.pop()(grad_kernel)
                return grad_x.add_(ceil_avg_pool_backward(grad_kernel, x.shape[2:], stride))
            self._record(backward)
        if not need_output:
            return None
        return involution(x, kernel, *hyper)


@functools.cache
def _parse_key(key):
    return ast.literal_eval(key)


def _chain_key(stages, tensors):
    """The op argument that describes a chain: the repr (which reads back exactly) of its
    stages (nested tuples of str, int, float, bool) and of which of its tensors are present.
    The op takes the present ones only: autograd follows the tensors of a list of tensors,
    not of one that holds None."""
    return repr((tuple(stages), tuple(t is not None for t in tensors)))


def _all_tensors(present_tensors, present):
    """The chain's tensors in stage order, None where ``present`` (of the key, see
    :func:`_chain_key`) says absent."""
    given = iter(present_tensors)
    return [next(given) if here else None for here in present]


def _chain_forward(x, tensors, key):
    stages, present = _parse_key(key)
    run = _Pass(_all_tensors(tensors, present))
    out = run.run(stages, x)
    return [out, *[t for stats in run.new_stats for t in stats]]


@torch.library.custom_op('involution_mm::recomputed_chain', mutates_args=())
def recomputed_chain(x: torch.Tensor, tensors: Sequence[torch.Tensor],
                     key: str) -> List[torch.Tensor]:
    """Runs the chain described by ``key`` on ``x`` with the weights and buffers
    ``tensors``: ``[out, *stats]``, for every BN on batch statistics its mean, inverse
    deviation (which backward needs) and unbiased variance (with the mean, for the running
    statistics, which the caller updates).

    An op of its own, not an autograd Function, so that torch.compile keeps it whole: the
    compiler would otherwise trace the stages and choose itself what to save and recompute
    (with checkpointing it recomputes a region's output, a closing conv included, and more
    than the chain's one saved input)."""
    return _chain_forward(x, tensors, key)


# the fake kernel: the stages' own shape logic, on fake tensors
recomputed_chain.register_fake(_chain_forward)


@torch.library.custom_op('involution_mm::recomputed_chain_backward', mutates_args=())
def recomputed_chain_backward(grad: torch.Tensor, x: torch.Tensor,
                              tensors: Sequence[torch.Tensor], stats: Sequence[torch.Tensor],
                              key: str, needs_grad: Sequence[bool]) -> List[torch.Tensor]:
    """``[grad_x, *grads]`` of :func:`recomputed_chain` for ``grad`` of its output: the
    stages recomputed from ``x`` and ``stats`` (mean and inverse deviation of each BN), each
    stage's derivative applied in reverse. A tensor whose ``needs_grad`` is false gets an
    empty placeholder."""
    stages, present = _parse_key(key)
    needs = iter(needs_grad)
    run = _Pass(_all_tensors(tensors, present), stats,
                needs_grad=[here and next(needs) for here in present])
    run.run(stages, x, need_output=False)
    while run.records:  # popped, so each stage's recomputed tensors go once used
        grad = run.records.pop()(grad)
    grads = [g for g, here in zip(run.grads, present) if here]
    return [grad, *[g if g is not None else x.new_empty(0) for g in grads]]


@recomputed_chain_backward.register_fake
def _(grad, x, tensors, stats, key, needs_grad):
    return [torch.empty_like(x), *[torch.empty_like(t) if needed else x.new_empty(0)
                                   for t, needed in zip(tensors, needs_grad)]]


def _setup_context(ctx, inputs, output):
    x, tensors, key = inputs
    ctx.key = key
    ctx.needs_grad = [t.requires_grad for t in tensors]
    means, invstds = output[1::3], output[2::3]
    ctx.save_for_backward(x, *tensors, *[t for pair in zip(means, invstds) for t in pair])
    ctx.num_tensors = len(tensors)


def _backward(ctx, grads):
    x, *saved = ctx.saved_tensors
    tensors, stats = saved[:ctx.num_tensors], saved[ctx.num_tensors:]
    grad_x, *weight_grads = recomputed_chain_backward(grads[0], x, tensors, stats, ctx.key,
                                                      ctx.needs_grad)
    return (grad_x, [g if needed else None for g, needed in zip(weight_grads, ctx.needs_grad)],
            None)


recomputed_chain.register_autograd(_backward, setup_context=_setup_context)


def _syncs_across_processes(bn):
    return (isinstance(bn, nn.SyncBatchNorm) and bn.training and dist.is_available()
            and dist.is_initialized() and dist.get_world_size(bn.process_group) > 1)


def module_stages(modules):
    """``(stages, tensors, norms)`` describing ``modules`` applied in order, or None where
    one of them cannot be part of a chain (another type or configuration, hooks).

    ``norms`` lists, in the order of the chain's batch statistics, the BN each belongs to
    (None where no running statistics are to be updated)."""
    stages, tensors, norms = [], [], []
    for module in modules:
        if not _without_hooks(module):
            return None
        kind = type(module)
        if kind in BATCH_NORMS and not _syncs_across_processes(module):
            batch_stats = module.training or module.running_mean is None
            stages.append(('bn', module.eps, batch_stats))
            tensors += [module.weight, module.bias] + (
                [None, None] if batch_stats else [module.running_mean, module.running_var])
            if batch_stats:
                norms.append(module if module.training and module.track_running_stats
                             else None)
        elif kind is nn.ReLU:
            stages.append(('relu', ))
        elif (kind is nn.Conv2d and module.padding_mode == 'zeros'
              and not isinstance(module.padding, str)):
            stages.append(('conv', module.stride, module.padding, module.dilation,
                           module.groups))
            tensors += [module.weight, module.bias]
        elif kind is nn.MaxPool2d and not module.return_indices:
            stride = module.kernel_size if module.stride is None else module.stride
            stages.append(('maxpool', _pair(module.kernel_size), _pair(stride),
                           _pair(module.padding), _pair(module.dilation), module.ceil_mode))
        elif kind is ConvModule or hasattr(module, 'chain_stages'):
            # a ConvModule's own layers, or a layer that describes itself
            inner = (_conv_module_stages(module) if kind is ConvModule
                     else module.chain_stages())
            if inner is None:
                return None
            for described, more in zip((stages, tensors, norms), inner):
                described += more
        else:
            return None
    return stages, tensors, norms


def _conv_module_stages(module):
    if module.order != ('conv', 'norm', 'act') or module.with_explicit_padding:
        return None
    parts = [module.conv]
    if module.with_norm:
        parts.append(module.norm)
    if module.with_activation:
        parts.append(module.activate)
    return module_stages(parts)


def _update_running_stats(bn, mean, unbiased_var):
    """What BatchNorm's forward does to its buffers in training."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        factor = 1.0 / float(bn.num_batches_tracked)
    else:
        factor = bn.momentum
    with torch.no_grad():
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(unbiased_var, factor)


def _update_all_running_stats(norms, means, unbiased_vars):
    for bn, mean, unbiased_var in zip(norms, means, unbiased_vars):
        if bn is not None:
            _update_running_stats(bn, mean, unbiased_var)


def make_chain(modules, x):
    """A function computing ``modules`` applied in order as one recomputing autograd node
    (see the module docstring), for an input like ``x``; or None where a chain does not
    apply: no gradient is wanted, ``x`` is not float32/float64, autocast is on, or a module
    cannot be part of one (then call the modules as usual)."""
    if not (torch.is_grad_enabled() and x.dtype in CHAIN_DTYPES and x.numel() > 0
            and not torch.is_autocast_enabled(x.device.type)):
        return None
    described = module_stages(modules)
    if described is None:
        return None
    stages, tensors, norms = described
    if not (x.requires_grad or any(t is not None and t.requires_grad for t in tensors)):
        return None
    key = _chain_key(stages, tensors)
    present = [t for t in tensors if t is not None]

    def chain(inp):
        out, *stats = recomputed_chain(inp, present, key)
        _update_all_running_stats(norms, stats[0::3], stats[2::3])
        return out
    return chain


def involution_stages(module):
    """Chain stages of an :class:`~involution_mm.ops.Involution`: the op on its input with
    the kernel from its branch (pool, ConvModule, ConvModule); None where the branch cannot
    be part of a chain or the compiled op is missing (its gradients are the op's kernels)."""
    if not HAS_EXTENSION:
        return None
    branch = module_stages([module.conv1, module.conv2])
    if branch is None:
        return None
    stages, tensors, norms = branch
    padding = default_padding(module.kernel_size, module.dilation)
    return ([('involution', module.kernel_size, module.stride, module.dilation, padding,
              tuple(stages))], tensors, norms)
