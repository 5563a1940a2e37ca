"""ONNX export of ``torch.ops.involution_mm.involution`` in standard ONNX operators.

torch 2.13 recommends the dynamo-based ``torch.onnx.export(..., dynamo=True)``; a custom op
reaches it through ``custom_translation_table``, which maps the op to an onnxscript
function. :func:`involution_onnx` writes the op as K*K shifted multiply-adds on the
zero-padded input (Pad, then per tap a strided Slice of the input, a Mul by that tap's
kernel plane broadcast over the group's channels and an Add into the sum; the kernel planes
come from one Split). Only the standard domain is used, so onnxruntime, OpenVINO and
TensorRT read the graph without plugins. Measured against an unfold-style gather (a
depthwise Conv with one-hot weights, Mul, ReduceSum; also per kernel row) and ONNX
DeformConv (a mask-only deformable conv is an involution; OpenVINO cannot read it),
the shift-add form was the fastest in both runtimes at RedNet's stride-1 shapes and keeps
three input-sized tensors alive instead of K*K (see ``benchmarks/onnx_involution_candidates.json``).
Every size stays symbolic: the slices are written relative to the padded tensor's ends and
the reshapes take their sizes from ``Shape``, so batch and spatial sizes can be dynamic.
"""
import torch

from .involution import HAS_EXTENSION

#: the ONNX opset of exported graphs (Split's ``num_outputs`` needs 18)
ONNX_OPSET = 18
_TO_END = 2 ** 62  # a Slice end past any size: "to the end"


def _opset():
    try:
        from onnxscript import opset18
    except ImportError as err:
        raise ImportError('involution_mm: ONNX export needs onnxscript (and onnx); install the '
                          'pinned versions from requirements.txt') from err
    return opset18


def involution_onnx(input, weight, kernel_size, stride, dilation, padding):
    """ONNX graph of ``involution_mm::involution`` (input (B, C, H, W), weight
    (B, G, K, K, Ho, Wo)), traced by the exporter with Python ints for the hyper-parameters."""
    op = _opset()
    k, s, d, p = kernel_size, stride, dilation, padding

    def ints(*values):
        return op.Constant(value_ints=list(values))

    in_shape, w_shape = op.Shape(input), op.Shape(weight)
    batch_groups = op.Slice(w_shape, ints(0), ints(2))
    out_hw = op.Slice(w_shape, ints(4), ints(6))
    # (B, G, C/G, H, W): a kernel plane (B, G, 1, Ho, Wo) broadcasts over a group's channels
    grouped = op.Reshape(input, op.Concat(batch_groups, ints(-1), op.Slice(in_shape, ints(2),
                                                                           ints(4)), axis=0))
    padded = op.Pad(grouped, ints(0, 0, 0, p, p, 0, 0, 0, p, p))
    planes = op.Split(op.Reshape(weight, op.Concat(batch_groups, ints(k * k), out_hw, axis=0)),
                      axis=2, num_outputs=k * k)
    # tap (u, v) reads rows u*d, u*d + s, ... of the padded input: Ho of them end d*(K-1) - u*d
    # before its end, whatever H is
    span = d * (k - 1)
    total = None
    for u in range(k):
        for v in range(k):
            starts = ints(u * d, v * d)
            ends = ints(*(-(span - t * d) if span > t * d else _TO_END for t in (u, v)))
            tap = op.Slice(padded, starts, ends, ints(3, 4), ints(s, s))
            term = op.Mul(tap, planes[u * k + v])
            total = term if total is None else op.Add(total, term)
    return op.Reshape(total, op.Concat(op.Slice(in_shape, ints(0), ints(2)), out_hw, axis=0))


def custom_translation_table():
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``; empty
    without the compiled extension, where :func:`~involution_mm.ops.involution` runs the
    unfold reference, which exports through the stock translations."""
    _opset()
    if not HAS_EXTENSION:
        return {}
    return {torch.ops.involution_mm.involution.default: involution_onnx}
