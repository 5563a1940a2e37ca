"""involution_mm: involution (Li et al., CVPR 2021) for OpenMMLab 2.x.

Importing it (e.g. ``custom_imports=dict(imports=['involution_mm'])`` in a config):
* lets ``torch.load`` (weights_only, torch >= 2.6) read the checkpoints mmengine writes;
* registers RedNet, InvolutionFPN and the involution heads in the ``involution_mm`` MODELS
  node and under their short names in mmdet/mmseg/mmpretrain, those that import.
"""
from .version import __version__
from .ops import Involution, involution, involution_reference
from .utils import install_safe_globals, load_checkpoint_file

install_safe_globals()

from . import registry  # noqa: E402
from . import models  # noqa: E402
from .models import InvolutionFPN, RedNet  # noqa: E402

__all__ = ['__version__', 'Involution', 'involution', 'involution_reference', 'RedNet',
           'InvolutionFPN', 'load_checkpoint_file', 'registry', 'models']
