"""ONNX export of the models of a config, in mmdeploy's spirit, and the runtime comparison.

What is exported (``part='auto'``):

* segmentors (Semantic FPN, UPerNet): the whole network, ``model(x, mode='tensor')``: the
  normalised image in, the decode head's logits out (1/4 of the input size for these heads);
* one-stage detectors (RetinaNet): the whole network up to the raw head outputs
  (``mode='tensor'``: per FPN level the class scores, then the box deltas);
* two-stage detectors (Faster/Mask R-CNN): backbone + neck + RPN head outputs, the part
  mmdeploy exports before its RoI ops (proposal NMS and RoIAlign per image run outside);
* classifiers (mmpretrain): the whole network to the logits, where ``mmpretrain.models``
  imports (it needs torchvision);
* ``part='backbone'``: the bare backbone of any config (for RedNet its stage outputs).

The image is exported after the data preprocessor (mean/std normalisation, BGR->RGB and
padding stay outside, as in mmdeploy). Everything runs on CPU, in eval mode, with SyncBN
as BN. The graph uses standard ONNX operators only (the involution op through
:mod:`involution_mm.ops.onnx`).
"""
import contextlib
import os.path as osp

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.onnx import ONNX_OPSET, custom_translation_table
from .utils.runtime import (UnsupportedSetupError, check_scope_available, config_scope,
                            drop_pretrained, replace_sync_bn)

PARTS = ('auto', 'full', 'backbone')
#: the seed of the random weights exported where no checkpoint is given
EXPORT_SEED = 0
#: a run in fp32 agrees with PyTorch to this fraction of the output's largest magnitude
FP32_REL_TOLERANCE = 1e-4


class ExportError(ValueError):
    """The config, checkpoint, shape or part cannot be exported; the message says why and
    what to export instead."""


class TensorMode(nn.Module):
    """``model(x, mode='tensor')`` (mmdet/mmseg/mmpretrain) with the outputs flattened."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _flatten(self.model(x, mode='tensor'))


class BackboneNeckRPN(nn.Module):
    """Backbone, neck and RPN head of a two-stage detector: the FPN features, then per
    level the RPN objectness scores, then per level the RPN box deltas."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        feats = self.detector.extract_feat(x)
        scores, deltas = self.detector.rpn_head(feats)
        return (*feats, *scores, *deltas)


class Backbone(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return _flatten(self.backbone(x))


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return (out,)
    flat = []
    for item in out:
        flat.extend(_flatten(item))
    return tuple(flat)


def load_config(path, cfg_options=None):
    from mmengine.config import Config
    if not osp.isfile(path):
        raise ExportError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise ExportError(f'{path} defines no model')
    replace_sync_bn(cfg._cfg_dict)
    # export reads the given checkpoint (or keeps random weights), never the pretraining file
    drop_pretrained(cfg._cfg_dict['model'])
    return cfg


def _family(model):
    """'segmentor', 'one_stage', 'two_stage', 'classifier' or None."""
    try:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'segmentor'
    except ImportError:
        pass
    try:
        from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
        if isinstance(model, TwoStageDetector):
            return 'two_stage'
        if isinstance(model, SingleStageDetector):
            return 'one_stage'
    except ImportError:
        pass
    if type(model).__name__ == 'ImageClassifier':
        return 'classifier'
    return None


def _build_backbone(cfg):
    """The config's backbone; one of this package's (RedNet) from its own registry, which
    needs none of the downstream packages' models (mmpretrain's need torchvision)."""
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as ROOT_MODELS

    from .registry import MODELS, SCOPE
    backbone_cfg = dict(cfg.model.backbone)
    name = str(backbone_cfg.get('type', ''))
    short = name[len(SCOPE) + 1:] if name.startswith(SCOPE + '.') else name
    if short in MODELS.module_dict:
        return MODELS.build({**backbone_cfg, 'type': short})
    with DefaultScope.overwrite_default_scope(config_scope(cfg)):
        return ROOT_MODELS.build(backbone_cfg)


def _build_model(cfg):
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as ROOT_MODELS
    try:
        check_scope_available(cfg)
    except UnsupportedSetupError as err:
        raise ExportError(f'{err} Export the bare backbone instead: --part backbone') from None
    with DefaultScope.overwrite_default_scope(config_scope(cfg)):
        return ROOT_MODELS.build(cfg.model)


def _load_checkpoint(module, checkpoint, part):
    from mmengine.runner import load_checkpoint
    if part != 'backbone':
        load_checkpoint(module, checkpoint, map_location='cpu', strict=True)
        return
    state = torch.load(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    # a whole-model checkpoint keeps the backbone under 'backbone.'
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    module.load_state_dict(state, strict=True)


def build_exportable(cfg, checkpoint=None, part='auto'):
    """(module, description, output_names) for the export of ``cfg``'s model."""
    from mmengine.model import revert_sync_batchnorm
    if part not in PARTS:
        raise ExportError(f'part must be one of {PARTS}, got {part!r}')
    if checkpoint and not osp.isfile(checkpoint):
        raise ExportError(f'checkpoint file not found: {checkpoint} (looked for '
                          f'{osp.abspath(checkpoint)}); give a local file written by '
                          'tools/train.py or tools/convert_official_checkpoint.py, or leave '
                          'it out to export random weights')
    if part == 'backbone':
        backbone = _build_backbone(cfg)
        if checkpoint:
            _load_checkpoint(backbone, checkpoint, part)
        module = Backbone(revert_sync_batchnorm(backbone))
        indices = getattr(backbone, 'out_indices', None)
        names = [f'stage{i}' for i in indices] if indices is not None else None
        return module.eval(), f'backbone ({type(backbone).__name__})', names
    model = _build_model(cfg)
    family = _family(model)
    if family is None:
        raise ExportError(f'{type(model).__name__} is not a segmentor, detector or classifier '
                          'this exporter knows; export the backbone with --part backbone')
    if checkpoint:
        _load_checkpoint(model, checkpoint, part)
    model = revert_sync_batchnorm(model).eval()
    name = type(model).__name__
    if family == 'two_stage':
        if part == 'full':
            raise ExportError(
                f'the RoI stage of {name} (per-image proposal NMS, RoIAlign, the RoI heads) '
                'cannot be exported to standard ONNX operators; export --part auto '
                '(backbone + neck + RPN head outputs, the part mmdeploy exports before its '
                'RoI ops) or --part backbone')
        levels = len(model.rpn_head.prior_generator.strides)
        names = ([f'feat{i}' for i in range(levels)] + [f'rpn_cls{i}' for i in range(levels)]
                 + [f'rpn_reg{i}' for i in range(levels)])
        return BackboneNeckRPN(model).eval(), f'{name}: backbone + neck + RPN head', names
    names = None
    if family == 'one_stage':
        levels = len(model.bbox_head.prior_generator.strides)
        names = [f'cls{i}' for i in range(levels)] + [f'reg{i}' for i in range(levels)]
    elif family == 'segmentor':
        names = ['seg_logits']
    elif family == 'classifier':
        names = ['logits']
    return TensorMode(model).eval(), f'{name}: whole network (mode=tensor)', names


def check_shape(shape, batch):
    if len(shape) != 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ExportError(f'--shape takes two positive ints H W, got {shape}')
    if not isinstance(batch, int) or batch < 1:
        raise ExportError(f'--batch must be a positive int, got {batch}')


def _upsample_by_scale(self, x):
    if self.size:
        return F.interpolate(x, self.size, None, self.mode, self.align_corners)
    return F.interpolate(x, None, self.scale_factor, self.mode, self.align_corners)


@contextlib.contextmanager
def _export_rewrites():
    """Patches, for the export only, the model code that does not trace to a graph valid at
    other sizes (as mmdeploy's function rewriters do): mmseg's ``Upsample`` computes its
    output size with ``int()`` of the traced size, which bakes the example's size into the
    graph; upsampling by the scale factor gives the same size and values."""
    try:
        from mmseg.models.utils.wrappers import Upsample
    except ImportError:
        yield
        return
    forward = Upsample.forward
    Upsample.forward = _upsample_by_scale
    try:
        yield
    finally:
        Upsample.forward = forward


def spatial_dims_can_vary(module):
    """False where the graph must fix the image size: adaptive pooling to more than one bin
    (UPerNet's pyramid pooling) has windows that depend on the input size, which ONNX
    pooling takes as constants."""
    for m in module.modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
            if any(s not in (1, None) for s in size):
                return False
    return True


def export_onnx(module, example, path, output_names=None, dynamic=False):
    """Exports ``module(example)`` to ``path`` (dynamo exporter, opset :data:`ONNX_OPSET`);
    with ``dynamic`` the batch, and height and width where :func:`spatial_dims_can_vary`,
    stay symbolic.
    Returns the ``onnx.ModelProto`` read back from the file."""
    import onnx
    dynamic_shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        dims = (0, 2, 3) if spatial_dims_can_vary(module) else (0,)
        dynamic_shapes = ({d: auto for d in dims},)
    with torch.no_grad(), _export_rewrites():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=ONNX_OPSET,
            custom_translation_table=custom_translation_table(), input_names=['input'],
            output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=False,
            verbose=False)
    _light_optimize(program.model)
    _name_input_dims(program.model)
    program.save(path)
    return onnx.load(path)


def _light_optimize(model):
    """The exporter's optimizer without its pattern rewriter: constant folding, dead-node
    removal, initializer deduplication, common subexpressions. The rewriter tries every
    rule at every node and took ~90% of a RedNet-26 export (2.5 minutes of 3 on 2 cores)
    for graphs that onnxruntime and OpenVINO fuse themselves."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import _constant_folding
    ir.passes.Sequential(
        common.InlinePass(), _constant_folding.FoldConstantsPass(
            shape_inference=True, input_size_limit=8192, output_size_limit=262144),
        common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
    )(model)


def _name_input_dims(model):
    """The exporter's symbols of the input's dynamic dims (s0, s77, ...) renamed
    batch/height/width in the input's and the outputs' shapes (the outputs' are
    expressions of them, e.g. ((height - 1)//32) + 1)."""
    import re

    import onnx_ir as ir
    symbols = [getattr(d, 'value', d) for d in model.graph.inputs[0].shape]
    names = {sym: name for sym, name in zip(symbols, ('batch', None, 'height', 'width'))
             if isinstance(sym, str) and name}
    if not names:
        return
    pattern = re.compile(r'\b(' + '|'.join(map(re.escape, names)) + r')\b')
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is None:
            continue
        dims = [getattr(d, 'value', d) for d in value.shape]
        value.shape = ir.Shape([ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], d))
                                if isinstance(d, str) else d for d in dims])


def nonstandard_nodes(model):
    """(domain, op_type) of every node outside the standard ONNX domain, functions included."""
    found = set()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.domain not in ('', 'ai.onnx'):
                found.add((node.domain, node.op_type))
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField('g') else list(attr.graphs))
    for function in model.functions:
        found.add((function.domain, function.name))
    return sorted(found)


def input_dims(model):
    """The exported input's dims: ints, or the names of symbolic ones."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def torch_outputs(module, x):
    with torch.no_grad():
        return [t.numpy() for t in _flatten(module(torch.from_numpy(x)))]


def ort_session(path, threads=None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnxruntime(path, x, threads=None):
    session = ort_session(path, threads)
    return session.run(None, {session.get_inputs()[0].name: x})


def openvino_model(path, threads=None):
    """OpenVINO's compiled CPU model in f32 (its CPU plugin otherwise runs bf16 where the CPU
    has it)."""
    import openvino as ov
    config = {'INFERENCE_PRECISION_HINT': 'f32'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    return ov.Core().compile_model(path, 'CPU', config)


def run_openvino(path, x, threads=None):
    compiled = openvino_model(path, threads)
    result = compiled.create_infer_request().infer([x])
    return [result[out] for out in compiled.outputs]


def compare(reference, outputs):
    """(max abs difference, max abs difference / largest |reference|) over all outputs."""
    if len(reference) != len(outputs):
        raise ExportError(f'the runtime gave {len(outputs)} outputs, PyTorch {len(reference)}')
    abs_diff, scale = 0.0, 0.0
    for ref, out in zip(reference, outputs):
        if ref.shape != tuple(out.shape):
            raise ExportError(f'output shape {tuple(out.shape)} differs from PyTorch\'s '
                              f'{ref.shape}')
        abs_diff = max(abs_diff, float(np.abs(ref - out).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return abs_diff, abs_diff / scale if scale else abs_diff
