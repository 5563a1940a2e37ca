"""Pure-PyTorch involution: argument checks, the output-size rule and the unfold reference.

The reference materialises the K*K-times-larger unfolded input, so it is slow and memory
hungry; it is the ground truth of the tests and the fallback where the compiled extension
is missing.
"""
import torch
import torch.nn.functional as F

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def involution_out_size(size, kernel_size, stride=1, dilation=1, padding=0):
    """PyTorch's convolution rule: floor((size + 2p - d(K-1) - 1) / s) + 1.

    With odd K and the default padding d(K-1)/2 this is ceil(size / s), which is also what
    ``AvgPool2d(s, s, ceil_mode=True)`` gives, so the kernel branch of :class:`Involution`
    produces weights of exactly this size for odd and even inputs alike.
    """
    span = size + 2 * padding - dilation * (kernel_size - 1) - 1
    return span // stride + 1 if span >= 0 else 0


def default_padding(kernel_size, dilation=1):
    _check_int('kernel_size', kernel_size, 1)
    _check_int('dilation', dilation, 1)
    return dilation * (kernel_size - 1) // 2


#: the largest hyper-parameter accepted: the kernels index with 32-bit ints where they can
MAX_HYPER_PARAMETER = 2 ** 31 - 1


class InvolutionArgumentTypeError(TypeError, ValueError):
    """An argument of involution of the wrong type: a TypeError by Python's convention, and
    a ValueError like every other invalid argument, so ``except ValueError`` catches all."""


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvolutionArgumentTypeError(
            f'involution: {name} must be an int, got {type(value).__name__}')
    if value < minimum:
        kind = 'positive' if minimum == 1 else 'non-negative'
        raise ValueError(f'involution: {name} must be {kind}, got {value}')
    if value > MAX_HYPER_PARAMETER:
        raise ValueError(f'involution: {name} must be at most {MAX_HYPER_PARAMETER}, got {value}')


def canonical_weight(weight, kernel_size):
    """Returns the weight as (B, G, K, K, Ho, Wo), accepting the flat (B, G*K*K, Ho, Wo)
    layout that the kernel-generation branch produces."""
    _check_int('kernel_size', kernel_size, 1)
    if not isinstance(weight, torch.Tensor):
        raise InvolutionArgumentTypeError(
            f'involution: weight must be a Tensor, got {type(weight).__name__}')
    if weight.dim() == 4:
        kk = kernel_size * kernel_size
        if weight.shape[1] % kk != 0:
            raise ValueError(
                f'involution: a 4-d weight must be (B, G*K*K, Ho, Wo) with K*K={kk}, but its '
                f'{weight.shape[1]} channels are not a multiple of {kk}')
        b, gkk, h, w = weight.shape
        return weight.reshape(b, gkk // kk, kernel_size, kernel_size, h, w)
    return weight


def check_involution_args(input, weight, kernel_size, stride, dilation, padding,
                          mixed_dtypes=False):
    """Validates a call with a (B, G, K, K, Ho, Wo) weight; returns (Ho, Wo).

    ``mixed_dtypes`` admits input and weight of different dtypes, which autocast unifies."""
    _check_int('kernel_size', kernel_size, 1)
    _check_int('stride', stride, 1)
    _check_int('dilation', dilation, 1)
    _check_int('padding', padding, 0)
    for name, t, dim in (('input', input, 4), ('weight', weight, 6)):
        if not isinstance(t, torch.Tensor):
            raise InvolutionArgumentTypeError(
                f'involution: {name} must be a Tensor, got {type(t).__name__}')
        if t.dim() != dim:
            raise ValueError(f'involution: {name} must be {dim}-d, got shape {tuple(t.shape)}')
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f'involution: {name} must be float32, float64, float16 or '
                             f'bfloat16, got {t.dtype}')
    if input.dtype != weight.dtype and not mixed_dtypes:
        raise ValueError(f'involution: input has dtype {input.dtype} but weight has '
                         f'{weight.dtype}')
    if input.device != weight.device:
        raise ValueError(f'involution: input is on {input.device} but weight is on {weight.device}')
    b, c, h, w = input.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError('involution: input must have non-zero channels, height and width, '
                         f'got shape {tuple(input.shape)}')
    ho = involution_out_size(h, kernel_size, stride, dilation, padding)
    wo = involution_out_size(w, kernel_size, stride, dilation, padding)
    if ho <= 0 or wo <= 0:
        raise ValueError(f'involution: input of size {h}x{w} is too small for '
                         f'kernel_size={kernel_size}, dilation={dilation}, padding={padding}')
    groups = weight.shape[1]
    if groups == 0 or c % groups != 0:
        raise ValueError(f'involution: {c} channels cannot be split into {groups} groups '
                         '(weight.shape[1]); C must be divisible by the number of groups')
    expected = (b, groups, kernel_size, kernel_size, ho, wo)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f'involution: weight must have shape (B, G, K, K, Ho, Wo) = {expected} for input '
            f'{tuple(input.shape)}, kernel_size={kernel_size}, stride={stride}, '
            f'dilation={dilation}, padding={padding}; got {tuple(weight.shape)}')
    return ho, wo


def involution_reference(input, weight, kernel_size, stride=1, dilation=1, padding=None):
    """out[b,c,i,j] = sum_{u,v} W[b,g(c),u,v,i,j] * x[b,c,i*s-p+u*d, j*s-p+v*d] via unfold."""
    if padding is None:
        padding = default_padding(kernel_size, dilation)
    weight = canonical_weight(weight, kernel_size)
    ho, wo = check_involution_args(input, weight, kernel_size, stride, dilation, padding)
    b, c, _, _ = input.shape
    groups = weight.shape[1]
    cols = F.unfold(input, kernel_size, dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(b, groups, c // groups, kernel_size * kernel_size, ho, wo)
    kernel = weight.reshape(b, groups, 1, kernel_size * kernel_size, ho, wo)
    return (kernel * cols).sum(dim=3).view(b, c, ho, wo)
