"""involution_mm: involution (Li et al., CVPR 2021) for OpenMMLab 2.x.

Importing it (e.g. ``custom_imports=dict(imports=['involution_mm'])`` in a config):
* lets ``torch.load`` (weights_only, torch >= 2.6) read the checkpoints mmengine writes;
* registers RedNet, InvolutionFPN and the involution heads in the ``involution_mm`` MODELS
  node and under their short names in mmdet/mmseg/mmpretrain, those that import.

The op layer (:mod:`involution_mm.ops`: the functional op, its autograd, fake kernels and
reference) needs torch alone. The ``Involution`` module, the models and the registries need
mmengine and mmcv (``mmcv-lite`` is enough); where either is missing, importing this package
still works, warns once, and :data:`UNAVAILABLE` names what is missing and why.
"""
import warnings

from .version import __version__
from .ops import involution, involution_reference, missing_openmmlab_package
from .utils import install_safe_globals, load_checkpoint_file

install_safe_globals()

#: what could not be imported -> why (empty when mmengine and mmcv are installed)
UNAVAILABLE = {}
_OPENMMLAB_PARTS = ('Involution', 'RedNet', 'InvolutionFPN', 'registry', 'models', 'engine')

try:
    from . import registry  # noqa: E402
    from . import models  # noqa: E402
    from . import engine  # noqa: E402
    from .models import InvolutionFPN, RedNet  # noqa: E402
    from .ops import Involution  # noqa: E402
except ModuleNotFoundError as err:
    _missing = missing_openmmlab_package(err)
    if _missing is None:
        raise
    _reason = f'needs mmengine and mmcv (or mmcv-lite), and {_missing!r} is not installed'
    UNAVAILABLE.update({name: _reason for name in _OPENMMLAB_PARTS if name not in globals()})
    warnings.warn(f'involution_mm: only the op layer (involution_mm.ops) is available: '
                  f'{", ".join(UNAVAILABLE)} need mmengine and mmcv (or mmcv-lite), and '
                  f'{_missing!r} is not installed', stacklevel=2)


def __getattr__(name):
    if name in UNAVAILABLE:
        raise ImportError(f'involution_mm.{name} {UNAVAILABLE[name]}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['__version__', 'UNAVAILABLE', 'Involution', 'involution', 'involution_reference',
           'RedNet', 'InvolutionFPN', 'load_checkpoint_file', 'registry', 'models']
