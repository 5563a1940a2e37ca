"""FCN mask head whose convs are 7x7 involutions + ReLU (the official "neck_fpn_head")."""
import torch.nn as nn
from mmdet.models.roi_heads.mask_heads import FCNMaskHead

from ...registry import MODELS
from ..necks.involution_fpn import build_involution


# registered also under the official name
@MODELS.register_module(name=['InvolutionFCNMaskHead', 'FCNMaskHead_involution'])
class InvolutionFCNMaskHead(FCNMaskHead):
    """mmdet's ``FCNMaskHead`` whose ``num_convs`` convs are ``Involution(256, 7, 1)`` + ReLU.

    Same arguments, outputs, targets and losses as ``FCNMaskHead``; the involutions keep the
    channels, so ``conv_out_channels`` must equal ``in_channels`` when ``num_convs > 0``.
    ``conv_kernel_size`` is unused (the kernel is ``involution_cfg['kernel_size']``, 7).
    Keys of the convs as the official head: ``convs.i.0.conv1.*``, ``convs.i.0.conv2.*``.

    Args:
        involution_cfg (dict, optional): kernel_size (7), group_channels (16),
            reduction_ratio (4), norm_cfg (default ``norm_cfg`` if given, else BN: the norm
            inside the involution's kernel branch), act_cfg (ReLU).
        **kwargs: the arguments of ``FCNMaskHead``.
    """
    _involution_mm_scopes = ('mmdet', )

    def __init__(self, num_convs=4, in_channels=256, conv_out_channels=256, norm_cfg=None,
                 involution_cfg=None, **kwargs):
        if num_convs > 0 and conv_out_channels != in_channels:
            raise ValueError(f'InvolutionFCNMaskHead: an involution keeps its channels, so '
                             f'conv_out_channels ({conv_out_channels}) must equal in_channels '
                             f'({in_channels})')
        # built without convs (the rest of the head is identical when in == out channels)
        super().__init__(num_convs=0, in_channels=in_channels,
                         conv_out_channels=conv_out_channels, norm_cfg=norm_cfg, **kwargs)
        self.num_convs = num_convs
        self.involution_cfg = involution_cfg
        self.convs = nn.ModuleList(
            nn.Sequential(build_involution(in_channels, involution_cfg, norm_cfg),
                          nn.ReLU(inplace=True)) for _ in range(num_convs))
