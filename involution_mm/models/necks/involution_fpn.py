"""FPN whose 3x3 output convs are 7x7 involutions (the official "neck_fpn" of RedNet)."""
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from ...ops import Involution
from ...registry import MODELS


def build_involution(channels, involution_cfg, norm_cfg=None, stride=1):
    """An :class:`Involution` from ``involution_cfg`` (kernel_size, group_channels,
    reduction_ratio, norm_cfg, act_cfg); its kernel-branch norm defaults to ``norm_cfg``
    when given, else BN (as the official modules)."""
    cfg = dict(kernel_size=7, group_channels=16, reduction_ratio=4,
               norm_cfg=norm_cfg if norm_cfg is not None else dict(type='BN'))
    if involution_cfg:
        unknown = set(involution_cfg) - {'kernel_size', 'group_channels', 'reduction_ratio',
                                         'norm_cfg', 'act_cfg', 'dilation'}
        if unknown:
            raise ValueError(f'involution_cfg: unknown keys {sorted(unknown)}; valid keys are '
                             "['act_cfg', 'dilation', 'group_channels', 'kernel_size', "
                             "'norm_cfg', 'reduction_ratio']")
        cfg.update(involution_cfg)
    return Involution(channels, stride=stride, **cfg)


# registered also under the official name
@MODELS.register_module(name=['InvolutionFPN', 'FPN_involution'])
class InvolutionFPN(BaseModule):
    """Feature Pyramid Network whose 3x3 output convs are involutions.

    Same arguments, outputs and behaviour as mmdet's ``FPN`` (1x1 lateral convs, top-down
    pathway, extra levels by max-pool or by stride-2 3x3 convs), except that each output conv
    ``fpn_convs[i]`` of a backbone level is an ``Involution(out_channels, 7, 1)`` with no
    norm/activation after it, as the official RedNet neck (keys ``fpn_convs.i.conv1.*``,
    ``fpn_convs.i.conv2.*``). Extra stride-2 levels (RetinaNet) stay ordinary convs. Works
    in mmdet and mmseg configs alike (it does not need mmdet).

    Args:
        in_channels (list[int]): channels of each input level (the backbone outputs).
        out_channels (int): channels of every output level (a multiple of the involution's
            group_channels, 16).
        num_outs (int): number of outputs.
        start_level (int): first input level used. Default 0.
        end_level (int): last input level used (inclusive), -1 for the last. Default -1.
        add_extra_convs (bool | str): False (max-pool extra levels), True/'on_input',
            'on_lateral' or 'on_output' (source of the extra stride-2 convs).
        relu_before_extra_convs (bool): Default False.
        no_norm_on_lateral (bool): Default False.
        conv_cfg, norm_cfg, act_cfg (dict, optional): of the lateral and extra convs;
            ``norm_cfg`` also becomes the norm of the involutions' kernel branch unless
            ``involution_cfg`` sets one.
        upsample_cfg (dict): of the top-down interpolation. Default nearest.
        involution_cfg (dict, optional): overrides of the output involutions: kernel_size
            (7), group_channels (16), reduction_ratio (4), norm_cfg (BN), act_cfg (ReLU).
        extra_convs_on_inputs (bool, optional): deprecated (mmdet 2.x / official configs):
            with ``add_extra_convs=True``, True means 'on_input', False 'on_output'.
        init_cfg: Default Xavier (uniform) for every Conv2d, as mmdet's FPN and the official
            neck.
    """

    def __init__(self,
                 in_channels,
                 out_channels,
                 num_outs,
                 start_level=0,
                 end_level=-1,
                 add_extra_convs=False,
                 relu_before_extra_convs=False,
                 no_norm_on_lateral=False,
                 conv_cfg=None,
                 norm_cfg=None,
                 act_cfg=None,
                 upsample_cfg=dict(mode='nearest'),
                 involution_cfg=None,
                 extra_convs_on_inputs=None,
                 init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels or not all(
                isinstance(c, int) and c > 0 for c in in_channels):
            raise ValueError('InvolutionFPN: in_channels must be a non-empty list of the '
                             f'channels of each input level, got {in_channels!r}')
        in_channels = list(in_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.fp16_enabled = False
        self.upsample_cfg = dict(upsample_cfg).copy()

        if not 0 <= start_level < self.num_ins:
            raise ValueError(f'InvolutionFPN: start_level={start_level} must index one of the '
                             f'{self.num_ins} input levels')
        if end_level == -1 or end_level == self.num_ins - 1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(f'InvolutionFPN: num_outs={num_outs} is less than the '
                                 f'{self.num_ins - start_level} input levels used')
        else:
            self.backbone_end_level = end_level + 1
            if not start_level <= end_level < self.num_ins:
                raise ValueError(f'InvolutionFPN: end_level={end_level} must be -1 or in '
                                 f'{start_level}..{self.num_ins - 1}')
            if num_outs != end_level - start_level + 1:
                raise ValueError(f'InvolutionFPN: with end_level={end_level}, num_outs must be '
                                 f'{end_level - start_level + 1}, got {num_outs}')
        self.start_level = start_level
        self.end_level = end_level

        if add_extra_convs is True and extra_convs_on_inputs is not None:
            add_extra_convs = 'on_input' if extra_convs_on_inputs else 'on_output'
        if isinstance(add_extra_convs, str):
            valid = ('on_input', 'on_lateral', 'on_output')
            if add_extra_convs not in valid:
                raise ValueError(f'InvolutionFPN: add_extra_convs={add_extra_convs!r}; valid '
                                 f'values are False, True, {valid}')
        elif not isinstance(add_extra_convs, bool):
            raise TypeError(f'InvolutionFPN: add_extra_convs must be a bool or a str, got '
                            f'{add_extra_convs!r}')
        elif add_extra_convs:
            add_extra_convs = 'on_input'
        self.add_extra_convs = add_extra_convs

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(self.start_level, self.backbone_end_level):
            self.lateral_convs.append(
                ConvModule(in_channels[i], out_channels, 1, conv_cfg=conv_cfg,
                           norm_cfg=norm_cfg if not no_norm_on_lateral else None,
                           act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(build_involution(out_channels, involution_cfg, norm_cfg))

        extra_levels = num_outs - self.backbone_end_level + self.start_level
        if self.add_extra_convs and extra_levels >= 1:
            for i in range(extra_levels):
                if i == 0 and self.add_extra_convs == 'on_input':
                    extra_in = self.in_channels[self.backbone_end_level - 1]
                else:
                    extra_in = out_channels
                self.fpn_convs.append(
                    ConvModule(extra_in, out_channels, 3, stride=2, padding=1,
                               conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                               inplace=False))

    def _check_inputs(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != self.num_ins:
            got = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(f'InvolutionFPN: expected {self.num_ins} input levels (in_channels='
                             f'{self.in_channels}), got {got}; the backbone out_indices must '
                             'give one output per entry of in_channels')
        got = [x.shape[1] for x in inputs]
        if got != self.in_channels:
            raise ValueError(f'InvolutionFPN: the inputs have {got} channels but in_channels is '
                             f'{self.in_channels}; set in_channels={got}')

    def forward(self, inputs):
        self._check_inputs(inputs)
        laterals = [
            lateral_conv(inputs[i + self.start_level])
            for i, lateral_conv in enumerate(self.lateral_convs)
        ]
        used_backbone_levels = len(laterals)
        for i in range(used_backbone_levels - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i],
                                                                  **self.upsample_cfg)
            else:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(
                    laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)

        outs = [self.fpn_convs[i](laterals[i]) for i in range(used_backbone_levels)]
        if self.num_outs > len(outs):
            if not self.add_extra_convs:
                for i in range(self.num_outs - used_backbone_levels):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    extra_source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    extra_source = laterals[-1]
                else:
                    extra_source = outs[-1]
                outs.append(self.fpn_convs[used_backbone_levels](extra_source))
                for i in range(used_backbone_levels + 1, self.num_outs):
                    if self.relu_before_extra_convs:
                        outs.append(self.fpn_convs[i](F.relu(outs[-1])))
                    else:
                        outs.append(self.fpn_convs[i](outs[-1]))
        return tuple(outs)
