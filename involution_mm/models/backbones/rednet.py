"""RedNet (Li et al., CVPR 2021): ResNet bottlenecks whose 3x3 conv is a 7x7 involution.

Module and parameter names are those of the official RedNet
(github.com/d-li14/involution), so its checkpoints load without missing or unexpected keys.
"""
import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch._prims_common import suggest_memory_format
from mmcv.cnn import ConvModule, build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init
from torch.nn.modules.batchnorm import _BatchNorm

from ...ops import Involution
from ...ops.module import involution_norm_act
from ...ops.pooling import max_pool
from ...ops.pointwise import (_without_hooks, conv_norm_act, eager_cpu_inference,
                              onednn_conv_relu, pointwise_conv)
from ...ops.recompute import make_chain
from ...registry import MODELS

def _is_pos_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Bottleneck(nn.Module):
    """RedNet bottleneck: 1x1 conv, 7x7 involution (carries stride and dilation), 1x1 conv.

    Keys: conv1.weight, bn1.*, conv2.{conv1,conv2}.* (the involution), bn2.*, conv3.weight,
    bn3.*, downsample.{0,1}.* (official names). ``norm_cfg`` builds bn1-3, the downsample
    norm and the norm inside the involution's kernel branch. With ``recompute_activations``
    bn1 -> ReLU -> involution -> bn2 -> ReLU -> conv3 runs as one recomputing chain
    (:func:`~involution_mm.ops.recompute.make_chain`) that keeps only conv1's output. In
    inference each 1x1 conv runs with its norm, ReLU and (conv3) the residual add as one op
    (:func:`~involution_mm.ops.pointwise.conv_norm_act`), the involution with bn2 and its ReLU
    (:func:`~involution_mm.ops.module.involution_norm_act`). ``downsample`` is an nn.Sequential
    of optional pooling layers, a conv and a norm, as :class:`ResLayer` builds it.
    """
    expansion = 4

    def __init__(self,
                 in_channels,
                 out_channels,
                 expansion=4,
                 stride=1,
                 dilation=1,
                 downsample=None,
                 style='pytorch',
                 with_cp=False,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 involution_kernel_size=7,
                 group_channels=16,
                 reduction_ratio=4,
                 recompute_kernel=True,
                 recompute_activations=True):
        super().__init__()
        if style not in ('pytorch', 'caffe'):
            raise ValueError(f"RedNet: style must be 'pytorch' or 'caffe', got {style!r}")
        if out_channels % expansion != 0:
            raise ValueError(f'RedNet: out_channels={out_channels} is not divisible by '
                             f'expansion={expansion}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.expansion = expansion
        self.mid_channels = out_channels // expansion
        self.stride = stride
        self.dilation = dilation
        self.style = style
        self.with_cp = with_cp
        self.recompute_activations = recompute_activations
        conv1_stride, conv2_stride = (1, stride) if style == 'pytorch' else (stride, 1)

        self.conv1 = build_conv_layer(conv_cfg, in_channels, self.mid_channels, kernel_size=1,
                                      stride=conv1_stride, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, self.mid_channels)[1]
        self.conv2 = Involution(self.mid_channels, involution_kernel_size, conv2_stride,
                                dilation=dilation, reduction_ratio=reduction_ratio,
                                recompute_kernel=recompute_kernel,
                                group_channels=group_channels, norm_cfg=norm_cfg)
        self.bn2 = build_norm_layer(norm_cfg, self.mid_channels)[1]
        self.conv3 = build_conv_layer(conv_cfg, self.mid_channels, out_channels, kernel_size=1,
                                      bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def _shortcut(self, x):
        if self.downsample is None:
            return x
        *pooling, conv, norm = self.downsample
        for layer in pooling:
            x = layer(x)
        return conv_norm_act(x, conv, norm)

    def _inner_forward(self, x):
        identity = self._shortcut(x)
        chain = make_chain([self.bn1, self.relu, self.conv2, self.bn2, self.relu, self.conv3],
                           x) if self.recompute_activations else None
        if chain is not None:
            out = chain(pointwise_conv(x, self.conv1))
            return self.relu(self.bn3(out) + identity)
        out = conv_norm_act(x, self.conv1, self.bn1, self.relu)
        out = involution_norm_act(out, self.conv2, self.bn2, self.relu)
        return conv_norm_act(out, self.conv3, self.bn3, self.relu, residual=identity)

    def forward(self, x):
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)


class ResLayer(nn.Sequential):
    """A stage of ``num_blocks`` bottlenecks; the first one changes stride/channels."""

    def __init__(self, block, num_blocks, in_channels, out_channels, expansion=4, stride=1,
                 dilation=1, first_dilation=None, avg_down=False, conv_cfg=None,
                 norm_cfg=dict(type='BN'), **kwargs):
        downsample = None
        if stride != 1 or in_channels != out_channels:
            layers = []
            conv_stride = stride
            if avg_down and stride != 1:
                conv_stride = 1
                layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True,
                                           count_include_pad=False))
            layers += [
                build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size=1,
                                 stride=conv_stride, bias=False),
                build_norm_layer(norm_cfg, out_channels)[1]
            ]
            downsample = nn.Sequential(*layers)
        first_dilation = dilation if first_dilation is None else first_dilation
        blocks = [
            block(in_channels, out_channels, expansion=expansion, stride=stride,
                  dilation=first_dilation, downsample=downsample, conv_cfg=conv_cfg,
                  norm_cfg=norm_cfg, **kwargs)
        ]
        for _ in range(1, num_blocks):
            blocks.append(
                block(out_channels, out_channels, expansion=expansion, stride=1,
                      dilation=dilation, conv_cfg=conv_cfg, norm_cfg=norm_cfg, **kwargs))
        super().__init__(*blocks)


@MODELS.register_module()
class RedNet(BaseModule):
    """RedNet backbone (Li et al., "Involution", CVPR 2021), depths 26/38/50/101/152.

    Structure and state_dict keys are those of the official RedNet: ``stem`` (3x3 s2
    ConvModule, involution(32, ``stem_kernel_size``), norm, ReLU, 3x3 ConvModule), max-pool,
    ``layer1``-``layer4`` of bottlenecks whose 3x3 conv is a 7x7 involution. Official
    classification checkpoints (stem kernel 3) load with ``init_cfg=dict(type='Pretrained',
    checkpoint=PATH, prefix='backbone.')``; official detection/segmentation ones use
    ``stem_kernel_size=7``.

    Args:
        depth (int): 26, 38, 50, 101 or 152.
        in_channels (int): input image channels. Default 3.
        stem_channels (int): stem output channels. Default 64.
        base_channels (int): middle channels of the first stage. Default 64.
        stem_kernel_size (int): kernel of the stem involution: 3 in the official
            classification model, 7 in its detection/segmentation model. Default 3.
        expansion (int): bottleneck expansion. Default 4.
        num_stages (int): 1-4. Default 4.
        strides (Sequence[int]): stride of the first block of each stage. Default (1, 2, 2, 2).
        dilations (Sequence[int]): dilation of the involutions of each stage. Default
            (1, 1, 1, 1). For segmentation, output stride 8 is ``strides=(1, 2, 1, 1),
            dilations=(1, 1, 2, 4)`` and output stride 16 ``strides=(1, 2, 2, 1),
            dilations=(1, 1, 1, 2)``.
        contract_dilation (bool): the first block of a dilated stage uses half the
            dilation (as mmseg's ResNet). Default False.
        out_indices (Sequence[int]): stages whose outputs are returned (as a tuple).
            Default (3, ).
        style (str): 'pytorch' (stride on the involution, official) or 'caffe' (stride on
            the first 1x1 conv).
        avg_down (bool): downsample the shortcut with avg-pool + 1x1 conv. Default False.
        frozen_stages (int): freeze the stem (0) and stages 1..frozen_stages: no gradients,
            norm layers in eval mode. -1 freezes nothing. Default -1.
        conv_cfg (dict, optional): config of the 1x1/3x3 convs.
        norm_cfg (dict): config of every norm layer, including the stem norm and the norms
            inside the involutions (e.g. ``dict(type='SyncBN', requires_grad=True)``).
        norm_eval (bool): keep norm layers in eval mode while training. Default False.
        with_cp (bool): activation checkpointing of the blocks. Default False.
        zero_init_residual (bool): zero-init the last norm of each block (bn3). Default True.
        involution_kernel_size (int): kernel of the block involutions. Default 7.
        group_channels (int): channels per involution group. Default 16.
        reduction_ratio (int): reduction of the kernel branch. Default 4.
        recompute_kernel (bool): the involutions keep their kernel branch's reduced features
            for backward and rebuild the kernels there instead of storing them (see
            :class:`~involution_mm.ops.Involution`): less training memory for one more 1x1
            conv per involution in backward. Default True.
        recompute_activations (bool): in training, the BN -> ReLU -> involution -> BN ->
            ReLU -> conv runs of the blocks and of the stem keep only their input for
            backward and recompute the rest there
            (:func:`~involution_mm.ops.recompute.make_chain`): the same values and
            gradients, less training memory, some elementwise work, the kernel branch's first
            1x1 conv and the involution forward once more in backward. It needs
            ``recompute_kernel``; BNs that synchronise across processes, other norms and
            layers with hooks take the usual path. Default True.
        pretrained (str, optional): deprecated, use ``init_cfg``.
        init_cfg (dict | list[dict], optional): e.g. ``dict(type='Pretrained',
            checkpoint='work_dirs/rednet50.pth', prefix='backbone.')``. Default: Kaiming
            for convs, 1 for norms.
    """

    arch_settings = {
        26: (Bottleneck, (1, 2, 4, 1)),
        38: (Bottleneck, (2, 3, 5, 2)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth,
                 in_channels=3,
                 stem_channels=64,
                 base_channels=64,
                 stem_kernel_size=3,
                 expansion=4,
                 num_stages=4,
                 strides=(1, 2, 2, 2),
                 dilations=(1, 1, 1, 1),
                 contract_dilation=False,
                 out_indices=(3, ),
                 style='pytorch',
                 avg_down=False,
                 frozen_stages=-1,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN', requires_grad=True),
                 norm_eval=False,
                 with_cp=False,
                 zero_init_residual=True,
                 involution_kernel_size=7,
                 group_channels=16,
                 reduction_ratio=4,
                 recompute_kernel=True,
                 recompute_activations=True,
                 pretrained=None,
                 init_cfg=None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('RedNet: give either init_cfg or the deprecated pretrained, '
                                 'not both')
            if not isinstance(pretrained, str):
                raise TypeError(f'RedNet: pretrained must be a str, got {pretrained!r}')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        if init_cfg is None:
            init_cfg = [
                dict(type='Kaiming', layer=['Conv2d']),
                dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
            ]
        super().__init__(init_cfg=init_cfg)

        if depth not in self.arch_settings:
            raise ValueError(f'RedNet: invalid depth {depth!r}; valid depths are '
                             f'{sorted(self.arch_settings)}')
        if not (_is_pos_int(num_stages) and num_stages <= 4):
            raise ValueError(f'RedNet: num_stages must be 1, 2, 3 or 4, got {num_stages!r}')
        strides, dilations = tuple(strides), tuple(dilations)
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ValueError(f'RedNet: strides {strides} and dilations {dilations} must have '
                             f'num_stages={num_stages} entries each')
        for name, values in (('strides', strides), ('dilations', dilations)):
            if not all(_is_pos_int(v) for v in values):
                raise ValueError(f'RedNet: {name} must be positive ints, got {values}')
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i < num_stages
                                  for i in out_indices):
            raise ValueError(f'RedNet: out_indices {out_indices} must be a non-empty subset of '
                             f'{tuple(range(num_stages))}')
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= num_stages):
            raise ValueError(f'RedNet: frozen_stages must be in -1..{num_stages}, got '
                             f'{frozen_stages!r}')
        if style not in ('pytorch', 'caffe'):
            raise ValueError(f"RedNet: style must be 'pytorch' or 'caffe', got {style!r}")
        if not (_is_pos_int(stem_kernel_size) and stem_kernel_size % 2 == 1):
            raise ValueError(f'RedNet: stem_kernel_size must be an odd positive int (3 as the '
                             f'official classification model, 7 as its detection/segmentation '
                             f'model), got {stem_kernel_size!r}')
        if stem_channels % 2 or (stem_channels // 2) % group_channels:
            raise ValueError(f'RedNet: stem_channels={stem_channels} must be twice a multiple '
                             f'of group_channels={group_channels} (the stem involution runs '
                             f'on stem_channels // 2 channels)')

        self.depth = depth
        self.in_channels = in_channels
        self.stem_channels = stem_channels
        self.base_channels = base_channels
        self.stem_kernel_size = stem_kernel_size
        self.num_stages = num_stages
        self.strides = strides
        self.dilations = dilations
        self.out_indices = out_indices
        self.style = style
        self.avg_down = avg_down
        self.frozen_stages = frozen_stages
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.block, stage_blocks = self.arch_settings[depth]
        self.stage_blocks = stage_blocks[:num_stages]
        self.expansion = expansion
        involution_args = dict(involution_kernel_size=involution_kernel_size,
                               group_channels=group_channels, reduction_ratio=reduction_ratio,
                               recompute_kernel=recompute_kernel,
                               recompute_activations=recompute_activations)
        self.recompute_activations = recompute_activations

        self._make_stem_layer(in_channels, stem_channels, group_channels, reduction_ratio,
                              recompute_kernel)

        self.res_layers = []
        stage_in, stage_out = stem_channels, base_channels * expansion
        stage_channels = []
        for i, num_blocks in enumerate(self.stage_blocks):
            dilation = dilations[i]
            first_dilation = max(dilation // 2, 1) if contract_dilation else dilation
            if (stage_out // expansion) % group_channels:
                raise ValueError(f'RedNet: stage {i + 1} has {stage_out // expansion} involution '
                                 f'channels, not a multiple of group_channels={group_channels}')
            res_layer = ResLayer(
                self.block, num_blocks, stage_in, stage_out, expansion=expansion,
                stride=strides[i], dilation=dilation, first_dilation=first_dilation,
                avg_down=avg_down, conv_cfg=conv_cfg, norm_cfg=norm_cfg, style=style,
                with_cp=with_cp, **involution_args)
            layer_name = f'layer{i + 1}'
            self.add_module(layer_name, res_layer)
            self.res_layers.append(layer_name)
            stage_channels.append(stage_out)
            stage_in, stage_out = stage_out, stage_out * 2

        #: output channels of each returned stage (what a neck's in_channels must be)
        self.out_channels = tuple(stage_channels[i] for i in out_indices)
        self.feat_dim = stage_channels[-1]
        self._freeze_stages()

    def _make_stem_layer(self, in_channels, stem_channels, group_channels, reduction_ratio,
                         recompute_kernel):
        half = stem_channels // 2
        self.stem = nn.Sequential(
            ConvModule(in_channels, half, 3, stride=2, padding=1, conv_cfg=self.conv_cfg,
                       norm_cfg=self.norm_cfg, inplace=True),
            Involution(half, self.stem_kernel_size, 1, reduction_ratio=reduction_ratio,
                       group_channels=group_channels, norm_cfg=self.norm_cfg,
                       recompute_kernel=recompute_kernel),
            build_norm_layer(self.norm_cfg, half)[1],
            nn.ReLU(inplace=True),
            ConvModule(half, stem_channels, 3, stride=1, padding=1, conv_cfg=self.conv_cfg,
                       norm_cfg=self.norm_cfg, inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            self.stem.eval()
            for param in self.stem.parameters():
                param.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            layer = getattr(self, f'layer{i}')
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def _has_pretrained_init(self):
        cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
        return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)

    def init_weights(self):
        if self.is_init:
            return
        if self._has_pretrained_init():
            cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
            for cfg in cfgs:
                checkpoint = cfg.get('checkpoint') if isinstance(cfg, dict) else None
                if isinstance(checkpoint, str) and '://' not in checkpoint:
                    from ...utils.checkpoint import check_checkpoint_file
                    try:
                        check_checkpoint_file(checkpoint)  # fail fast, naming the file
                    except FileNotFoundError as err:
                        raise FileNotFoundError(
                            f'{err} For the official ImageNet-pretrained RedNet, download its '
                            'checkpoint (github.com/d-li14/involution) and convert it: '
                            '`python tools/convert_official_checkpoint.py OFFICIAL.pth '
                            f'{checkpoint}`; or set init_cfg=None to train from '
                            'scratch.') from None
        super().init_weights()
        if self.zero_init_residual and not self._has_pretrained_init():
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    constant_init(m.bn3, 0)

    def _stem_chains(self, x):
        """The stem and max-pool as conv -> chain -> chain, or None (see
        ``recompute_activations``): the chains run from the first conv's output through the
        involution to the second conv, and from there through its norm and ReLU to the
        max-pool."""
        first, involution, norm, relu, last = self.stem
        splittable = all(
            m.order == ('conv', 'norm', 'act') and m.with_norm and m.with_activation
            and not m.with_explicit_padding and _without_hooks(m) for m in (first, last))
        if not (self.recompute_activations and splittable and _without_hooks(self.stem)):
            return None
        into_last = make_chain([first.norm, first.activate, involution, norm, relu, last.conv],
                               x)
        into_pool = make_chain([last.norm, last.activate, self.maxpool], x)
        if not (into_last and into_pool):
            return None
        return lambda inp: into_pool(into_last(first.conv(inp)))

    def _stem_inference(self, x):
        """The stem and max-pool in float32 CPU inference (no grad, no autocast, not compiling
        or exporting), or None: in channels_last, where oneDNN's 3x3 convs need no reorders of
        their input and output and the max-pool is vectorised over channels, each conv (the
        involution's kernel-branch conv too) with its norm and ReLU as one oneDNN op
        (:func:`onednn_conv_relu`), the involution with its norm and ReLU as one
        (:func:`involution_norm_act`); the result in the input's memory format (NCHW: the
        layout of the stages' GEMMs)."""
        # eager_cpu_inference first: dynamo does not trace torch.backends.mkldnn.is_available
        if not (eager_cpu_inference(x, (torch.float32, )) and torch.backends.mkldnn.is_available()
                and type(self.maxpool) is nn.MaxPool2d
                and _without_hooks(self.stem) and _without_hooks(self.maxpool)):
            return None
        first, involution, norm, relu, last = self.stem
        first_conv, last_conv = onednn_conv_relu(first), onednn_conv_relu(last)
        if first_conv is None or last_conv is None:
            return None
        layout = suggest_memory_format(x)
        x = first_conv(x.contiguous(memory_format=torch.channels_last))
        x = last_conv(involution_norm_act(x, involution, norm, relu))
        return self.maxpool(x).contiguous(memory_format=layout)

    def _pool(self, x):
        """``self.maxpool(x)`` after a stem that no chain runs (a frozen one); for a plain
        nn.MaxPool2d without hooks, through :func:`~involution_mm.ops.pooling.max_pool`
        (channels_last on CPU in eager mode)."""
        pool = self.maxpool
        if type(pool) is not nn.MaxPool2d or not _without_hooks(pool) or pool.return_indices:
            return pool(x)
        return max_pool(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                        pool.ceil_mode)

    def forward(self, x):
        stem = self._stem_chains(x)
        if stem is not None:
            x = stem(x)
        else:
            inferred = self._stem_inference(x)
            x = inferred if inferred is not None else self._pool(self.stem(x))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
