"""ONNX export of ``torch.ops.involution_mm.involution`` in standard ONNX operators.

torch 2.13 recommends the dynamo-based ``torch.onnx.export(..., dynamo=True)``; a custom op
reaches it through ``custom_translation_table``, which maps the op to an onnxscript
function. No standard ONNX operator multiplies by per-pixel kernels, so
:func:`involution_onnx` puts the multiply-adds in MatMul: for an output row ``y``, kernel
row ``u`` and a tile of ``T`` output columns, the tile's outputs of a group's channels are
``band @ window``, where ``window`` (L x C/G) holds the L = s*(T-1) + d*(K-1) + 1 input
columns the tile reads from input row ``y*s + u*d`` and ``band`` (T x L) holds each output
column's K kernel taps on its diagonal, zeros elsewhere. The bands come from the kernels by
one MatMul with a constant 0/1 matrix (the band's layout, stride and dilation are in it),
the windows by one Gather per kernel row from the channels-last zero-padded input, and a
Sum adds the K kernel rows. The tile bounds the band's zeros; the width is padded to whole
tiles and the output cropped. This form was chosen by measurement in onnxruntime and
OpenVINO at RedNet-50's shapes against K*K shifted Slice + Mul + Add (the previous
translation), unfold-style gathers, ONNX DeformConv and other band layouts and tile sizes
(``benchmarks/onnx_involution_candidates.json``).
Only the standard domain is used, so onnxruntime, OpenVINO and TensorRT read the graph
without plugins. Every size stays symbolic: pads, gather indices, slices and reshapes take
their sizes from ``Shape``, so batch and spatial sizes can be dynamic.
"""
import numpy as np
import torch

from .involution import HAS_EXTENSION

#: the ONNX opset of exported graphs (Split's ``num_outputs`` needs 18)
ONNX_OPSET = 18
#: output columns per band tile
BAND_TILE = 7


def _opset():
    try:
        from onnxscript import opset18
    except ImportError as err:
        raise ImportError('involution_mm: ONNX export needs onnxscript (and onnx); install the '
                          'pinned versions from requirements.txt') from err
    return opset18


def band_matrix(kernel_size, stride, dilation, tile=BAND_TILE):
    """The 0/1 matrix (K*T, T*L) that maps a tile's kernel taps of one kernel row, in the
    order (v, x), to its band (x, q) flattened: tap v of output column x lands on input
    column q = x*s + v*d of the tile's window."""
    k, s, d, t = kernel_size, stride, dilation, tile
    width = s * (t - 1) + d * (k - 1) + 1
    v, x = np.meshgrid(np.arange(k), np.arange(t), indexing='ij')
    matrix = np.zeros((k * t, t * width), np.float32)
    matrix[(v * t + x).ravel(), (x * width + x * s + v * d).ravel()] = 1
    return matrix


def involution_onnx(input, weight, kernel_size, stride, dilation, padding):
    """ONNX graph of ``involution_mm::involution`` (input (B, C, H, W), weight
    (B, G, K, K, Ho, Wo)), traced by the exporter with Python ints for the hyper-parameters."""
    import onnx_ir as ir
    op = _opset()
    k, s, d, p = kernel_size, stride, dilation, padding
    t = BAND_TILE
    width = s * (t - 1) + d * (k - 1) + 1  # L: input columns a tile reads

    def ints(*values):
        return op.Constant(value_ints=list(values))

    def scalar(value):
        return op.Constant(value_int=value)

    def arange(n):  # n: a 1-element shape slice
        return op.Range(scalar(0), op.Squeeze(n), scalar(1))

    in_shape, w_shape = op.Shape(input), op.Shape(weight)
    batch_groups = op.Slice(w_shape, ints(0), ints(2))
    out_h, out_w = op.Slice(w_shape, ints(4), ints(5)), op.Slice(w_shape, ints(5), ints(6))
    tiles = op.Div(op.Add(out_w, ints(t - 1)), ints(t))
    tiled_w = op.Mul(tiles, ints(t))
    # input (B, G, H, W, C/G), zero-padded; the last tile's window ends s*(T-1) past W + 2p
    x = op.Reshape(input, op.Concat(batch_groups, ints(-1), op.Slice(in_shape, ints(2), ints(4)),
                                    axis=0))
    x = op.Pad(op.Transpose(x, perm=[0, 1, 3, 4, 2]),
               ints(0, 0, p, p, 0, 0, 0, p, p + s * (t - 1), 0))
    x_shape = op.Shape(x)
    padded_w = op.Slice(x_shape, ints(3), ints(4))
    x = op.Reshape(x, op.Concat(batch_groups, ints(-1), op.Slice(x_shape, ints(4), ints(5)),
                                axis=0))  # (B, G, Hp*Wp, C/G)
    # window (y, tile, q) of kernel row u: padded pixel (y*s + u*d, tile*s*T + q)
    rows = op.Mul(arange(out_h), op.Mul(op.Squeeze(padded_w), scalar(s)))
    cols = op.Add(op.Unsqueeze(op.Mul(arange(tiles), scalar(s * t)), ints(1)),
                  op.Constant(value_ints=list(range(width))))
    windows = op.Add(op.Unsqueeze(rows, ints(1, 2)), cols)  # (Ho, tiles, L)
    # kernels (B, G, u, Ho, tiles, v, T), width padded to whole tiles
    w = op.Pad(weight, op.Concat(ints(*[0] * 11), op.Sub(tiled_w, out_w), axis=0))
    w = op.Reshape(w, op.Concat(batch_groups, ints(k, k), out_h, tiles, ints(t), axis=0))
    w = op.Transpose(w, perm=[0, 1, 2, 4, 5, 3, 6])
    to_band = op.Constant(value=ir.tensor(band_matrix(k, s, d, t).astype(weight.dtype.numpy())))
    rows_of_kernel = op.Split(w, axis=2, num_outputs=k) if k > 1 else [w]
    terms = []
    for u in range(k):
        taps = op.Reshape(rows_of_kernel[u], op.Concat(batch_groups, out_h, tiles, ints(k * t),
                                                       axis=0))
        band = op.Reshape(op.MatMul(taps, to_band), ints(0, 0, 0, 0, t, width))
        window = op.Gather(x, op.Add(windows, op.Mul(padded_w, scalar(u * d))), axis=2)
        terms.append(op.MatMul(band, window))  # (B, G, Ho, tiles, T, C/G)
    out = op.Sum(*terms) if k > 1 else terms[0]
    out = op.Reshape(out, op.Concat(batch_groups, out_h, tiled_w, ints(-1), axis=0))
    out = op.Transpose(op.Slice(out, ints(0), out_w, ints(3)), perm=[0, 1, 4, 2, 3])
    return op.Reshape(out, op.Concat(op.Slice(in_shape, ints(0), ints(2)), out_h, out_w,
                                     axis=0))


def custom_translation_table():
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``; empty
    without the compiled extension, where :func:`~involution_mm.ops.involution` runs the
    unfold reference, which exports through the stock translations."""
    _opset()
    if not HAS_EXTENSION:
        return {}
    return {torch.ops.involution_mm.involution.default: involution_onnx}
