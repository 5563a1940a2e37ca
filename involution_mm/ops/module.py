"""The involution layer: a kernel-generation branch plus the involution op."""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from .involution import HAS_EXTENSION, involution, kernel_conv_involution
from .pointwise import (_without_hooks, conv_module_forward, eager_cpu_inference,
                        inference_scale_shift)
from .pooling import ceil_avg_pool
from .recompute import involution_stages, make_chain
from .reference import canonical_weight, default_padding


class Involution(nn.Module):
    """Involution (Li et al., CVPR 2021) with the official parameter names.

    The per-pixel kernels come from the input itself:
    ``conv2(conv1(x))`` for stride 1, ``conv2(conv1(AvgPool_s(x)))`` otherwise, where conv1 is
    a 1x1 ConvModule (channels -> channels / reduction_ratio, with norm and activation) and
    conv2 a biased 1x1 conv to K*K*G channels, G = channels / group_channels. The state_dict
    keys (conv1.conv, conv1.bn, conv2.conv) are those of the official checkpoints.

    Args:
        channels (int): input and output channels.
        kernel_size (int): odd K. Default 7.
        stride (int): Default 1. The output is ceil(H / stride) x ceil(W / stride); the
            branch pools in ceil mode (:func:`ceil_avg_pool`) so odd sizes give kernels of
            that size too.
        dilation (int): Default 1.
        reduction_ratio (int): Default 4.
        group_channels (int): channels sharing one kernel. Default 16.
        norm_cfg (dict): norm of conv1, e.g. dict(type='SyncBN'). Default BN.
        act_cfg (dict): activation of conv1. Default ReLU.
        recompute_kernel (bool): in training, rebuild the kernel branch in backward instead
            of keeping its tensors (the generated kernels alone have G*K*K channels, 3x the
            input's in RedNet): with a BN-and-ReLU branch (:mod:`~involution_mm.ops.recompute`)
            only the input is kept; otherwise conv1's output is kept and the kernels are
            rebuilt from it (:func:`kernel_conv_involution`). Same results, less memory.
            Default True.
    """

    def __init__(self, channels, kernel_size=7, stride=1, dilation=1, reduction_ratio=4,
                 group_channels=16, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'),
                 recompute_kernel=True):
        super().__init__()
        for name, value in (('channels', channels), ('kernel_size', kernel_size),
                            ('stride', stride), ('dilation', dilation),
                            ('reduction_ratio', reduction_ratio),
                            ('group_channels', group_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'Involution: {name} must be a positive int, got {value!r}')
        if kernel_size % 2 == 0:
            raise ValueError(f'Involution: kernel_size must be odd, got {kernel_size}')
        if channels % group_channels != 0:
            raise ValueError(f'Involution: channels={channels} is not divisible by '
                             f'group_channels={group_channels}')
        if channels // reduction_ratio < 1:
            raise ValueError(f'Involution: reduction_ratio={reduction_ratio} leaves no '
                             f'channels of {channels} in the kernel branch')
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = channels // group_channels
        self.recompute_kernel = recompute_kernel
        self.conv1 = ConvModule(channels, channels // reduction_ratio, 1, norm_cfg=norm_cfg,
                                act_cfg=act_cfg)
        self.conv2 = ConvModule(channels // reduction_ratio, kernel_size * kernel_size * self.groups,
                                1, norm_cfg=None, act_cfg=None)

    def chain_stages(self):
        """This layer as stages of a recomputing chain (:func:`make_chain`), or None."""
        return involution_stages(self) if self.recompute_kernel else None

    def forward(self, x):
        if self.recompute_kernel:
            chain = make_chain([self], x)
            if chain is not None:
                return chain(x)
        reduced = self._reduced(x)
        if self.recompute_kernel and torch.is_grad_enabled():
            return kernel_conv_involution(x, reduced, self.conv2.conv.weight,
                                          self.conv2.conv.bias, self.kernel_size, self.stride,
                                          self.dilation)
        return involution(x, conv_module_forward(self.conv2, reduced), self.kernel_size,
                          self.stride, self.dilation)

    def _reduced(self, x):
        """The kernel branch's features before its last 1x1 conv."""
        branch_in = x if self.stride == 1 else ceil_avg_pool(x, self.stride)
        return conv_module_forward(self.conv1, branch_in)

    def extra_repr(self):
        return (f'channels={self.channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, dilation={self.dilation}, groups={self.groups}')


def involution_norm_act(x, layer, norm=None, act=None):
    """``act(norm(layer(x)))`` for an :class:`Involution` ``layer``; ``norm`` and ``act``
    optional.

    In eager CPU inference on float32/64 input (as for
    :func:`~involution_mm.ops.pointwise.conv_norm_act`), with ``norm`` an eval-mode BN or
    ``nn.Identity`` and ``act`` an ``nn.ReLU``, none of them with hooks, the norm (as a
    per-channel scale and shift) and the ReLU run inside the op
    (``torch.ops.involution_mm.involution_epilogue``) on each block of its output while that
    is in cache, instead of as two more passes over the output. Otherwise the layers run one
    by one."""
    epilogue = _epilogue(x, layer, norm, act)
    if epilogue is None:
        out = layer(x)
        if norm is not None:
            out = norm(out)
        return out if act is None else act(out)
    scale, shift = epilogue
    kernels = conv_module_forward(layer.conv2, layer._reduced(x))
    k = layer.kernel_size
    return torch.ops.involution_mm.involution_epilogue(
        x, canonical_weight(kernels, k), k, layer.stride, layer.dilation,
        default_padding(k, layer.dilation), scale, shift, act is not None)


def _epilogue(x, layer, norm, act):
    """(scale, shift) of ``norm`` for :func:`involution_norm_act`'s fused op, or None where
    that op does not apply."""
    if not (HAS_EXTENSION and eager_cpu_inference(x, (torch.float32, torch.float64))
            and type(layer) is Involution and _without_hooks(layer)
            and (act is None or (type(act) is nn.ReLU and _without_hooks(act)))):
        return None
    scale_shift = inference_scale_shift(norm)
    if scale_shift is None or any(t is not None and t.dtype != x.dtype for t in scale_shift):
        return None
    return scale_shift
