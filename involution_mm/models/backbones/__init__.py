from .rednet import Bottleneck, RedNet, ResLayer

__all__ = ['Bottleneck', 'RedNet', 'ResLayer']
