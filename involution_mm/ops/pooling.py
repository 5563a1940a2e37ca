"""The kernel branch's ceil-mode average pool and its gradient; the stem's max-pool on CPU."""
import torch
import torch.nn.functional as F


def _pad_to_stride(h, w, stride):
    return (0, -w % stride, 0, -h % stride)


def ceil_avg_pool(x, stride):
    """AvgPool2d(stride, stride, ceil_mode=True): the last, partial windows of odd sizes
    average their valid pixels, so the output is ceil(H / stride) x ceil(W / stride).

    Written as a sum over a zero-padded input divided by the count of valid pixels because
    torch.compile (inductor, torch 2.13) computes wrong gradients for ceil_mode avg_pool2d
    on odd sizes. Even sizes take the plain pool.
    """
    if torch.compiler.is_exporting():
        # one AveragePool(ceil_mode) node, and no branch on the parity of a size that an
        # exported graph keeps symbolic; with no padding the partial windows average their
        # valid pixels
        return F.avg_pool2d(x, stride, stride, ceil_mode=True)
    h, w = x.shape[-2:]
    padding = _pad_to_stride(h, w, stride)
    if not any(padding):
        return F.avg_pool2d(x, stride, stride)
    sums = F.avg_pool2d(F.pad(x, padding), stride, stride, divisor_override=1)
    return sums / _window_counts(x, h, w, stride, padding)


def _window_counts(like, h, w, stride, padding):
    return F.avg_pool2d(F.pad(like.new_ones(1, 1, h, w), padding), stride, stride,
                        divisor_override=1)


def ceil_avg_pool_backward(grad, input_size, stride):
    """The gradient of :func:`ceil_avg_pool` w.r.t. its input of spatial size ``input_size``:
    each input pixel gets its window's gradient over the window's count of valid pixels."""
    h, w = input_size
    padding = _pad_to_stride(h, w, stride)
    if any(padding):
        grad = grad / _window_counts(grad, h, w, stride, padding)
    else:
        grad = grad / (stride * stride)
    grad = grad.repeat_interleave(stride, dim=2).repeat_interleave(stride, dim=3)
    return grad[:, :, :h, :w]


def max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=False):
    """``F.max_pool2d``, an NCHW CPU input pooled in channels_last.

    ATen's channels-last max-pool is vectorised over channels, the NCHW one loops over each
    plane's windows: the two copies cost less than the NCHW pool. Values and indices (flat
    positions within a plane, whatever the layout) are the NCHW pool's; the output is NCHW,
    the indices stay channels_last, which ``max_pool2d_with_indices_backward`` takes with
    an NCHW gradient. Compiled and exported graphs get the plain call: they choose layouts
    themselves.
    """
    if not (x.device.type == 'cpu' and x.dim() == 4 and x.is_contiguous()
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices=return_indices)
    pooled = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel_size, stride,
                          padding, dilation, ceil_mode, return_indices=return_indices)
    if return_indices:
        return pooled[0].contiguous(), pooled[1]
    return pooled.contiguous()
