"""involution_mm: involution (Li et al., CVPR 2021) for OpenMMLab 2.x."""
from .version import __version__
from .ops import Involution, involution, involution_reference

__all__ = ['__version__', 'Involution', 'involution', 'involution_reference']
