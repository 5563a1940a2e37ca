"""RPN head whose 3x3 conv is a 7x7 involution + ReLU (the official "neck_fpn_head")."""
import torch.nn as nn
from mmdet.models.dense_heads import RPNHead

from ...registry import MODELS
from ..necks.involution_fpn import build_involution


# registered also under the official name
@MODELS.register_module(name=['InvolutionRPNHead', 'RPNHead_involution'])
class InvolutionRPNHead(RPNHead):
    """mmdet's ``RPNHead`` with ``rpn_conv`` an ``Involution(in_channels, 7, 1)``.

    Same arguments and outputs as ``RPNHead``; the involution keeps the channels, so
    ``feat_channels`` must equal ``in_channels``. With ``num_convs=1`` (default, official)
    the keys are ``rpn_conv.conv1.*``, ``rpn_conv.conv2.*``, ``rpn_cls.*``, ``rpn_reg.*``;
    more convs give ``rpn_conv`` = involution, ReLU, involution, ... (ReLU after the last as
    in ``RPNHead.forward_single``).

    Args:
        in_channels (int): input (and feature) channels, a multiple of 16.
        involution_cfg (dict, optional): kernel_size (7), group_channels (16),
            reduction_ratio (4), norm_cfg (BN: the norm inside the involution's kernel
            branch; set SyncBN here), act_cfg (ReLU).
        **kwargs: the arguments of ``RPNHead`` (anchor_generator, bbox_coder, losses,
            feat_channels, num_convs, init_cfg, ...). The default init (Normal, std 0.01, of
            every Conv2d) includes the involutions' kernel-branch convs.
    """
    _involution_mm_scopes = ('mmdet', )

    def __init__(self, in_channels, involution_cfg=None, **kwargs):
        self.involution_cfg = involution_cfg
        feat_channels = kwargs.get('feat_channels', 256)
        if feat_channels != in_channels:
            raise ValueError(f'InvolutionRPNHead: an involution keeps its channels, so '
                             f'feat_channels ({feat_channels}) must equal in_channels '
                             f'({in_channels})')
        super().__init__(in_channels, **kwargs)

    def _init_layers(self):
        super()._init_layers()
        layers = []
        for i in range(self.num_convs):
            if i:
                layers.append(nn.ReLU(inplace=False))
            layers.append(build_involution(self.in_channels, self.involution_cfg))
        self.rpn_conv = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
