"""Conversion of official RedNet checkpoints (github.com/d-li14/involution) to this project.

The official classification (mmcls 0.x), detection (mmdet 2.x) and segmentation (mmseg 0.x)
checkpoints already use the module names of this project's models (``backbone.stem.*``,
``backbone.layerN.*``, ``neck.lateral_convs.*``/``neck.fpn_convs.*``, ``rpn_head.*``,
``roi_head.*``, ``decode_head.*``, ``head.fc.*``), and mmdet 3.x / mmseg 1.x / mmpretrain 1.x
kept those names, so every key maps to itself (``--backbone-only`` strips ``backbone.``).
What the conversion adds: it reads the file under torch's weights-only loader, infers the
architecture (depth, stem kernel, neck), builds this project's modules and checks every key
and shape against them (or against a whole model built from ``config``), reports exactly
which keys were mapped, missing, unexpected or of another shape, and writes an mmengine
checkpoint (``{'meta': ..., 'state_dict': ...}``) that loads on torch >= 2.6.
"""
import os.path as osp
import re
from collections import OrderedDict

import torch

from .checkpoint import (build_model_from_config, compare_state_dict, extract_state_dict,
                         load_checkpoint_file, state_shapes)

BACKBONE_PREFIX = 'backbone.'
_HEAD_PREFIXES = {
    'classification': ('head.', ),
    'detection': ('rpn_head.', 'roi_head.', 'bbox_head.'),
    'segmentation': ('decode_head.', 'auxiliary_head.'),
}


class ConversionError(RuntimeError):
    pass


def infer_kind(keys):
    keys = list(keys)
    if any(k.startswith('decode_head.') for k in keys):
        return 'segmentation'
    if any(k.startswith(('rpn_head.', 'roi_head.', 'bbox_head.')) for k in keys):
        return 'detection'
    if any(k.startswith('head.') for k in keys):
        return 'classification'
    return 'backbone'


def infer_backbone_prefix(keys):
    keys = list(keys)
    if any(k.startswith(BACKBONE_PREFIX + 'stem.') for k in keys):
        return BACKBONE_PREFIX
    if any(k.startswith('stem.') for k in keys):
        return ''
    raise ConversionError('no RedNet backbone in this checkpoint: found neither '
                          "'backbone.stem.*' nor 'stem.*' keys")


def infer_rednet_args(state_dict, prefix=BACKBONE_PREFIX):
    """depth, stem_kernel_size, num_stages, stem_channels, group_channels of a RedNet."""
    from ..models.backbones.rednet import RedNet
    blocks = {}
    pattern = re.compile(re.escape(prefix) + r'layer(\d+)\.(\d+)\.')
    for key in state_dict:
        m = pattern.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks.get(stage, -1), block + 1)
    num_stages = len(blocks)
    counts = tuple(blocks.get(i + 1, 0) for i in range(num_stages))
    depth = None
    for d, (_, arch) in RedNet.arch_settings.items():
        if arch[:num_stages] == counts:
            depth = d
            break
    if depth is None:
        valid = {d: arch for d, (_, arch) in RedNet.arch_settings.items()}
        raise ConversionError(f'the backbone has {counts} blocks per stage, which is no RedNet '
                              f'depth (valid: {valid})')
    stem_w = state_dict.get(prefix + 'stem.1.conv2.conv.weight')
    stem_in = state_dict.get(prefix + 'stem.1.conv1.conv.weight')
    if stem_w is None or stem_in is None:
        raise ConversionError(f'missing the stem involution ({prefix}stem.1.conv1/conv2)')
    stem_half = stem_in.shape[1]
    # the block involution of layer1: (K*K*G, C/r) with G = C / group_channels
    inv = state_dict.get(prefix + 'layer1.0.conv2.conv2.conv.weight')
    mid = state_dict.get(prefix + 'layer1.0.conv1.weight')
    group_channels = 16
    if inv is not None and mid is not None:
        kk = 49
        groups = inv.shape[0] // kk
        if groups and mid.shape[0] % groups == 0:
            group_channels = mid.shape[0] // groups
    stem_groups = stem_half // group_channels
    kk = stem_w.shape[0] // max(stem_groups, 1)
    k = int(round(kk ** 0.5))
    if k * k != kk:
        raise ConversionError(f'{prefix}stem.1.conv2.conv.weight has {stem_w.shape[0]} output '
                              f'channels, not K*K*{stem_groups} for an odd K')
    return dict(depth=depth, stem_kernel_size=k, num_stages=num_stages,
                stem_channels=2 * stem_half, group_channels=group_channels)


def _infer_involution_fpn(state_dict, prefix='neck.'):
    """InvolutionFPN arguments from the keys, or None if the neck is not an involution FPN."""
    if prefix + 'fpn_convs.0.conv1.conv.weight' not in state_dict:
        return None
    in_channels = []
    i = 0
    while prefix + f'lateral_convs.{i}.conv.weight' in state_dict:
        in_channels.append(state_dict[prefix + f'lateral_convs.{i}.conv.weight'].shape[1])
        i += 1
    out_channels = state_dict[prefix + 'lateral_convs.0.conv.weight'].shape[0]
    n_fpn = len({int(m.group(1)) for k in state_dict
                 for m in [re.match(re.escape(prefix) + r'fpn_convs\.(\d+)\.', k)] if m})
    extra = n_fpn - len(in_channels)
    args = dict(in_channels=in_channels, out_channels=out_channels,
                num_outs=max(n_fpn, len(in_channels)))
    if extra > 0:
        first = state_dict.get(prefix + f'fpn_convs.{len(in_channels)}.conv.weight')
        on_input = first is not None and first.shape[1] == in_channels[-1] != out_channels
        args['add_extra_convs'] = 'on_input' if on_input else 'on_output'
    else:
        # extra levels by max-pool are not in the state_dict; num_outs does not matter
        args['num_outs'] = len(in_channels)
    with_bias = prefix + 'lateral_convs.0.conv.bias' in state_dict
    if not with_bias:  # laterals with a norm (no bias)
        args['norm_cfg'] = dict(type='BN')
    return args


def convert_state_dict(state_dict, config=None, backbone_only=False):
    """Maps and validates an official state_dict.

    Returns (new_state_dict, report); report has kind, arch (inferred arguments), mapped
    [(src, dst)], missing, unexpected, mismatched [(key, shape_in_file, expected_shape)],
    unvalidated (keys passed through without a module to check them against) and notes.
    """
    from ..models.backbones.rednet import RedNet
    from ..models.necks.involution_fpn import InvolutionFPN

    keys = list(state_dict)
    kind = infer_kind(keys)
    prefix = infer_backbone_prefix(keys)
    arch = infer_rednet_args(state_dict, prefix)
    notes = []

    # key mapping: identity (official names are this project's names)
    mapping = OrderedDict((k, k) for k in keys)
    if backbone_only:
        mapping = OrderedDict((k, k[len(prefix):]) for k in keys if k.startswith(prefix))
        notes.append(f'backbone only: {len(keys) - len(mapping)} non-backbone keys dropped')
        prefix_out = ''
    else:
        prefix_out = prefix
    new_sd = OrderedDict((dst, state_dict[src]) for src, dst in mapping.items())

    # what the keys are checked against
    expected = OrderedDict()
    if config is not None:
        model = build_model_from_config(config)
        expected.update(state_shapes(model))
        if backbone_only:
            expected = OrderedDict((k[len(BACKBONE_PREFIX):], s) for k, s in expected.items()
                                   if k.startswith(BACKBONE_PREFIX))
        notes.append(f'validated against the model of {config}')
        validated_prefixes = ('', )
    else:
        backbone = RedNet(arch['depth'], stem_kernel_size=arch['stem_kernel_size'],
                          stem_channels=arch['stem_channels'],
                          group_channels=arch['group_channels'],
                          num_stages=arch['num_stages'],
                          strides=(1, 2, 2, 2)[:arch['num_stages']],
                          dilations=(1, 1, 1, 1)[:arch['num_stages']], out_indices=(0, ))
        expected.update(state_shapes(backbone, prefix_out))
        validated_prefixes = [prefix_out]  # '' (a bare backbone) covers every key
        if not backbone_only and prefix_out:
            neck_args = _infer_involution_fpn(state_dict)
            if neck_args is not None:
                expected.update(state_shapes(InvolutionFPN(**neck_args), 'neck.'))
                validated_prefixes.append('neck.')
                arch['neck'] = dict(type='InvolutionFPN', **neck_args)
            elif any(k.startswith('neck.') for k in keys):
                arch['neck'] = 'FPN (ordinary convs)'
            if 'head.fc.weight' in state_dict:
                w = state_dict['head.fc.weight']
                expected['head.fc.weight'] = (w.shape[0], backbone.feat_dim)
                if 'head.fc.bias' in state_dict:
                    expected['head.fc.bias'] = (w.shape[0], )
                validated_prefixes.append('head.')
                arch['num_classes'] = w.shape[0]

    fit = compare_state_dict(new_sd, expected)
    mapped, missing, mismatched = fit['mapped'], fit['missing'], fit['mismatched']
    if config is not None:
        unexpected = fit['unexpected']
        unvalidated = []
    else:
        covered = [k for k in new_sd
                   if k not in expected and any(k.startswith(p) for p in validated_prefixes)]
        unexpected = covered
        unvalidated = [k for k in new_sd if k not in expected and k not in set(covered)]
        if unvalidated:
            notes.append(f'{len(unvalidated)} keys outside the backbone/neck/classifier were '
                         'passed through unchecked; give --config to check them too')
    inverse = {dst: src for src, dst in mapping.items()}
    report = OrderedDict(
        kind=kind, arch=arch,
        mapped=[(inverse[k], k) for k in mapped],
        missing=missing, unexpected=unexpected,
        mismatched=mismatched, unvalidated=unvalidated, notes=notes)
    return new_sd, report


def _plain_meta(meta):
    """The JSON-like part of the source meta (strings, numbers, lists of them)."""
    out = {}
    for k, v in (meta or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
    return out


def convert_checkpoint(src, dst=None, config=None, backbone_only=False, trusted=False,
                       allow_partial=False):
    """Converts the file ``src``; writes ``dst`` (if given) unless problems were found and
    ``allow_partial`` is False. Returns the report (with 'ok' and 'written')."""
    from ..version import __version__
    checkpoint = load_checkpoint_file(src, trusted=trusted)
    state_dict = extract_state_dict(checkpoint)
    new_sd, report = convert_state_dict(state_dict, config=config, backbone_only=backbone_only)
    ok = not (report['missing'] or report['unexpected'] or report['mismatched'])
    report['ok'] = ok
    report['written'] = None
    dropped = [k for k in checkpoint if k not in ('state_dict', 'meta')] \
        if 'state_dict' in checkpoint else []
    if dropped:
        report['notes'].append(f'dropped top-level entries: {sorted(dropped)}')
    if dst is not None and (ok or allow_partial):
        meta = dict(
            converted_from=osp.basename(str(src)),
            converted_by=f'involution_mm {__version__} tools/convert_official_checkpoint.py',
            kind=report['kind'],
            arch={k: v for k, v in report['arch'].items() if k != 'neck'},
            backbone_only=backbone_only,
            source_meta=_plain_meta(checkpoint.get('meta') if isinstance(checkpoint, dict)
                                    else None))
        torch.save(dict(meta=meta, state_dict=new_sd), dst)
        report['written'] = str(dst)
    return report


def format_report(report, verbose=False):
    lines = [f"kind: {report['kind']}", f"architecture: {report['arch']}"]
    renamed = [(s, d) for s, d in report['mapped'] if s != d]
    lines.append(f"mapped: {len(report['mapped'])} keys ({len(renamed)} renamed, the rest "
                 'kept their name)')
    groups = OrderedDict()
    for s, d in report['mapped']:
        top = '.'.join(d.split('.')[:2]) if d.startswith(('backbone.', 'neck.')) \
            else d.split('.')[0]
        groups[top] = groups.get(top, 0) + 1
    for top, n in groups.items():
        lines.append(f'  {top}: {n}')
    if verbose:
        lines += [f'  {s} -> {d}' for s, d in report['mapped']]
    else:
        lines += [f'  {s} -> {d}' for s, d in renamed[:20]]
        if len(renamed) > 20:
            lines.append(f'  ... {len(renamed) - 20} more renamed (--verbose lists all)')
    for name in ('missing', 'unexpected'):
        lines.append(f'{name}: {len(report[name])}')
        lines += [f'  {k}' for k in report[name]]
    lines.append(f"shape mismatches: {len(report['mismatched'])}")
    lines += [f'  {k}: {a} in the file, {b} expected' for k, a, b in report['mismatched']]
    if report['unvalidated']:
        lines.append(f"passed through unchecked: {len(report['unvalidated'])}")
        if verbose:
            lines += [f'  {k}' for k in report['unvalidated']]
    lines += [f'note: {n}' for n in report['notes']]
    if 'ok' in report:
        lines.append('result: ' + ('OK' if report['ok'] else 'PROBLEMS FOUND') +
                     (f"; written {report['written']}" if report['written'] else
                      '; nothing written'))
    return '\n'.join(lines)
