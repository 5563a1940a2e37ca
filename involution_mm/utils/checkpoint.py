"""Checkpoint loading that works with ``torch.load(weights_only=True)`` (torch >= 2.6).

Since torch 2.6, ``torch.load`` unpickles only an allow-list of types unless it is told
``weights_only=False``. mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, so on
torch 2.13 loading any checkpoint that holds numpy arrays/scalars or mmengine's
``HistoryBuffer`` (every checkpoint the mmengine Runner writes: ``--resume``, ``load_from``,
``init_cfg=dict(type='Pretrained', ...)``) fails with an ``UnpicklingError``.

:func:`install_safe_globals` adds exactly those data-only types to torch's allow-list; it
runs when ``involution_mm`` is imported (so ``custom_imports=dict(imports=['involution_mm'])``
in a config is enough). The loading stays ``weights_only=True``: no arbitrary code runs.
:func:`load_checkpoint_file` is the one loader of this project (the tools' checks and the
converter use it): it checks that the file exists and is a complete ``torch.save`` file
before unpickling anything, and names the file in every error (:class:`CheckpointError`).
:func:`compare_state_dict` and :func:`build_model_from_config` (on the meta device: no
memory, no values) tell whether a file's weights fit a config's model before it is built.
"""
import os
import os.path as osp
import pickle
import zipfile
from collections import OrderedDict

import torch

_INSTALLED = False


def _numpy_safe_globals():
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency of torch's users here
        return []
    core = getattr(np, '_core', None)
    if core is None or not hasattr(core, 'multiarray'):  # numpy 1.x
        core = np.core
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    items = [np.ndarray, np.dtype, reconstruct, scalar]
    # numpy 1.x writes ``numpy.core.multiarray.*``, numpy 2.x ``numpy._core.multiarray.*``:
    # accept both spellings whichever numpy is installed.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        items.append((reconstruct, f'{module}._reconstruct'))
        items.append((scalar, f'{module}.scalar'))
    # a pickled dtype is rebuilt as an instance of its dtype class (numpy.dtypes.Float32DType)
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                items.append(obj)
    return items


def _history_buffer_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while unpickling, for one use only.

    mmengine's ``HistoryBuffer.__getstate__`` stores its statistics methods
    (``HistoryBuffer.min`` ...), which pickle writes as ``getattr(HistoryBuffer, 'min')``.
    Allowing the real ``getattr`` would let a file reach any attribute of any allowed
    object; this allows exactly those lookups: functions defined on ``HistoryBuffer``.
    """
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, type) and issubclass(obj, HistoryBuffer) and isinstance(name, str) \
            and not name.startswith('_'):
        value = obj.__dict__.get(name)
        if callable(value):
            return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'weights-only load: getattr({obj!r}, {name!r}) is not allowed (only the statistics '
        'methods of mmengine HistoryBuffer are)')


def _mmengine_safe_globals():
    items = []
    try:
        from mmengine.logging import HistoryBuffer
        items.append(HistoryBuffer)
        items.append((_history_buffer_getattr, 'builtins.getattr'))
    except Exception:  # mmengine missing: nothing of it can be in a checkpoint we load
        pass
    try:
        from mmengine.config import ConfigDict
        items.append(ConfigDict)
    except Exception:
        pass
    return items


def safe_globals():
    """The data-only types that mmengine/mmcv checkpoints hold besides tensors."""
    import collections
    return ([collections.OrderedDict, collections.defaultdict] + _numpy_safe_globals() +
            _mmengine_safe_globals())


def install_safe_globals():
    """Adds :func:`safe_globals` to torch's ``weights_only`` allow-list (idempotent).

    Afterwards a plain ``torch.load(path)`` (as mmengine calls it) loads mmengine-saved
    checkpoints on torch >= 2.6 without ``weights_only=False`` or environment variables.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads everything anyway)
        add(safe_globals())
    _INSTALLED = True


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used; the message's first line names the file and what
    is wrong with it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist (or is a URL, which these tools do not fetch)."""


#: what ``torch.save``'s legacy (non-zip) format writes first: pickle protocol 2, then the
#: pickled magic number 0x1950a86a20f9469cfc6c
_LEGACY_MAGIC = b'\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'
_ZIP_MAGIC = b'PK\x03\x04'


def check_checkpoint_file(filename):
    """Raises :class:`CheckpointNotFoundError` naming ``filename`` unless it is an existing
    local file; returns the path."""
    path = osp.expanduser(os.fspath(filename))
    if not osp.isfile(path):
        where = osp.abspath(path)
        raise CheckpointNotFoundError(
            f'checkpoint file not found: {filename!r} (looked for {where}). Nothing is '
            'downloaded: give the path of a local checkpoint file.')
    return path


def _check_file_format(path):
    """Raises :class:`CheckpointError` unless ``path`` looks like a complete file written by
    ``torch.save`` (zip archive with a data.pkl, or the legacy pickle format); returns
    'zip' or 'legacy'. Only headers and the zip directory are read."""
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(f'{path}: not a checkpoint: the file is empty (0 bytes)')
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as err:
            raise CheckpointError(
                f'{path}: truncated or corrupt checkpoint: its zip archive cannot be read '
                f'({err}; {size} bytes)') from None
        if not any(name.endswith('/data.pkl') or name == 'data.pkl' for name in names):
            raise CheckpointError(f'{path}: not a checkpoint: a zip archive without the '
                                  'data.pkl that torch.save writes')
        return 'zip'
    if head[:1] == b'\x80' and head[2:2 + len(_LEGACY_MAGIC)] == _LEGACY_MAGIC:
        return 'legacy'
    raise CheckpointError(
        f'{path}: not a checkpoint: neither torch.save\'s zip format nor its legacy format '
        f'(the file starts with {head[:16]!r})')


def _first_torch_message(err):
    """The line of a torch.load error that says what went wrong (torch wraps it in advice)."""
    text = str(err).replace('\x1b[1m', '').replace('\x1b[0m', '')
    for line in text.splitlines():
        if 'WeightsUnpickler error:' in line:
            return line.split('WeightsUnpickler error:', 1)[1].split('. Please use')[0].strip()
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first.split('. This is an internal')[0]


def _is_disallowed_global(err):
    text = str(err)
    return 'Unsupported global' in text or 'not an allowed global' in text or \
        'getattr(' in text


def load_checkpoint_file(filename, map_location='cpu', trusted=False, mmap=False):
    """Loads a local checkpoint file with ``weights_only=True`` and the allow-list above.

    The file's format is checked before anything is unpickled, and every problem raises
    :class:`CheckpointError` (:class:`CheckpointNotFoundError` for a missing file) whose
    first line names the file and what is wrong: missing, empty, truncated or corrupt, not
    a checkpoint, or holding Python objects outside the allow-list (refused before any of
    them is built, so nothing in the file runs).

    Args:
        filename (str | os.PathLike): a local file.
        map_location: as in :func:`torch.load`. Default 'cpu'.
        trusted (bool): if the file holds other Python objects, load it with
            ``weights_only=False`` (this runs code from the file: only for files you trust).
            Default False.
        mmap (bool): map a zip-format file's tensors instead of reading them (for checks
            that only look at names and shapes). Default False.

    Returns:
        Whatever the file holds (usually a dict with 'state_dict').
    """
    path = check_checkpoint_file(filename)
    file_format = _check_file_format(path)
    install_safe_globals()
    kwargs = dict(map_location=map_location, mmap=mmap and file_format == 'zip')
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        if not _is_disallowed_global(err):
            raise CheckpointError(f'{path}: truncated or corrupt checkpoint '
                                  f'({_first_torch_message(err)})') from None
        if trusted:
            return torch.load(path, weights_only=False, **kwargs)
        raise CheckpointError(
            f'{path}: holds Python objects outside the weights-only allow-list, so it was '
            f'not loaded and nothing in it ran ({_first_torch_message(err)}). If you trust '
            'the file, load it with trusted=True (converter: --trusted).') from None
    except EOFError:
        raise CheckpointError(f'{path}: truncated checkpoint: the file ends early '
                              f'({osp.getsize(path)} bytes)') from None
    except Exception as err:
        raise CheckpointError(f'{path}: truncated or corrupt checkpoint '
                              f'({type(err).__name__}: {_first_torch_message(err)})') from None


def extract_state_dict(checkpoint):
    """The state_dict of a loaded checkpoint: ``checkpoint['state_dict']`` (mmcv/mmengine),
    ``['model']`` or ``['module']``, or the checkpoint itself when it is a bare state_dict;
    a ``module.`` prefix (DataParallel) is removed."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state_dict = checkpoint[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)][:5]
        raise ValueError(f'not a state_dict: entries {bad} are not tensors')
    return strip_common_prefix(OrderedDict(state_dict), 'module.')


def strip_common_prefix(state_dict, prefix):
    """``state_dict`` without ``prefix`` if every key has it (DataParallel, TTA wrappers)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return state_dict


def load_state_dict_file(filename, mmap=True):
    """The state_dict of a checkpoint file, or :class:`CheckpointError` naming the file
    (see :func:`load_checkpoint_file`; also when the file holds no state_dict)."""
    checkpoint = load_checkpoint_file(filename, mmap=mmap)
    try:
        return extract_state_dict(checkpoint)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f'{filename}: not a checkpoint of weights: {err}') from None


def compare_state_dict(state_dict, expected):
    """How ``state_dict`` (name -> tensor) fits ``expected`` (name -> shape): a dict of
    ``mapped`` (names that fit), ``missing`` (expected, not in the file), ``unexpected``
    (in the file, not expected) and ``mismatched`` ((name, shape in file, expected shape))."""
    mapped, mismatched = [], []
    for key, value in state_dict.items():
        if key in expected:
            if tuple(value.shape) != tuple(expected[key]):
                mismatched.append((key, tuple(value.shape), tuple(expected[key])))
            else:
                mapped.append(key)
    return dict(mapped=mapped, missing=[k for k in expected if k not in state_dict],
                unexpected=[k for k in state_dict if k not in expected],
                mismatched=mismatched)


def describe_misfit(fit, limit=3):
    """One phrase naming the first keys of each kind of misfit in a :func:`compare_state_dict`
    result ('' if everything fits)."""
    parts = []
    if fit['mismatched']:
        shown = ', '.join(f'{k} {tuple(a)} in the file, {tuple(b)} in the model'
                          for k, a, b in fit['mismatched'][:limit])
        parts.append(f"{len(fit['mismatched'])} of another shape ({shown})")
    for kind, where in (('missing', 'missing from the file'),
                        ('unexpected', 'not in the model')):
        if fit[kind]:
            shown = ', '.join(fit[kind][:limit])
            more = ', ...' if len(fit[kind]) > limit else ''
            parts.append(f'{len(fit[kind])} {where} ({shown}{more})')
    return '; '.join(parts)


def build_model_from_config(config, device='meta'):
    """The model of an mm config (any scope), with init_cfg left alone (nothing loads).

    On the default ``device='meta'`` the parameters get shapes but no memory or values: the
    cheap way to know the names and shapes a checkpoint must have.
    """
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.registry import MODELS as ROOT
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    scope = cfg.get('default_scope', None)
    with DefaultScope.overwrite_default_scope(scope), torch.device(device):
        return ROOT.build(cfg.model)


def state_shapes(module, prefix=''):
    """name -> shape of a module's state_dict (a ``module.`` wrapper prefix removed),
    each name after ``prefix``."""
    shapes = OrderedDict((k, tuple(v.shape)) for k, v in module.state_dict().items())
    return OrderedDict((prefix + k, v)
                       for k, v in strip_common_prefix(shapes, 'module.').items())
