from .involution import HAS_EXTENSION, involution, kernel_conv_involution
from .module import Involution
from .reference import involution_out_size, involution_reference

__all__ = ['HAS_EXTENSION', 'Involution', 'involution', 'involution_out_size',
           'involution_reference', 'kernel_conv_involution']
