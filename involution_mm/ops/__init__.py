"""The involution op layer; it needs torch alone. ``Involution`` (the layer with its kernel
branch) is built from mmcv's ConvModule and needs mmcv (or mmcv-lite)."""
from .involution import HAS_EXTENSION, involution, kernel_conv_involution
from .reference import InvolutionArgumentTypeError, involution_out_size, involution_reference


def missing_openmmlab_package(err):
    """'mmengine' or 'mmcv' where the ModuleNotFoundError ``err`` is about that package
    missing, else None."""
    name = (err.name or '').split('.')[0]
    return name if name in ('mmengine', 'mmcv') else None


try:
    from .module import Involution
except ModuleNotFoundError as err:
    if missing_openmmlab_package(err) is None:
        raise
    _MODULE_IMPORT_ERROR = err

    def __getattr__(name):
        if name == 'Involution':
            raise ImportError('involution_mm.ops.Involution is built from mmcv.cnn.ConvModule '
                              f'and needs mmcv (or mmcv-lite): {_MODULE_IMPORT_ERROR}')
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

__all__ = ['HAS_EXTENSION', 'Involution', 'InvolutionArgumentTypeError', 'involution',
           'involution_out_size',
           'involution_reference', 'kernel_conv_involution']
