"""Involution heads for mmdet; they subclass mmdet's heads, so they exist only where mmdet
imports (:data:`IMPORT_ERROR` says why not otherwise)."""
IMPORT_ERROR = None
__all__ = []
try:
    from .involution_mask_head import InvolutionFCNMaskHead
    from .involution_rpn_head import InvolutionRPNHead
    __all__ += ['InvolutionFCNMaskHead', 'InvolutionRPNHead']
except Exception as err:  # mmdet missing or failing at import: the heads are unavailable
    IMPORT_ERROR = err
