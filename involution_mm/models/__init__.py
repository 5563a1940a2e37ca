"""RedNet, the involution FPN and the involution heads, registered in the ``involution_mm``
MODELS node and, where importable, in the MODELS registries of mmdet, mmseg and mmpretrain."""
from ..registry import register_downstream
from .backbones import RedNet
from .heads import *  # noqa: F401,F403  (only where mmdet imports)
from .heads import __all__ as _heads
from .necks import InvolutionFPN

__all__ = ['RedNet', 'InvolutionFPN'] + list(_heads)

register_downstream()
