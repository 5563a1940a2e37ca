from .involution_fpn import InvolutionFPN, build_involution

__all__ = ['InvolutionFPN', 'build_involution']
