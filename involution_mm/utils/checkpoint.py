"""Checkpoint loading that works with ``torch.load(weights_only=True)`` (torch >= 2.6).

Since torch 2.6, ``torch.load`` unpickles only an allow-list of types unless it is told
``weights_only=False``. mmengine 0.10.7 calls ``torch.load`` without ``weights_only``, so on
torch 2.13 loading any checkpoint that holds numpy arrays/scalars or mmengine's
``HistoryBuffer`` (every checkpoint the mmengine Runner writes: ``--resume``, ``load_from``,
``init_cfg=dict(type='Pretrained', ...)``) fails with an ``UnpicklingError``.

:func:`install_safe_globals` adds exactly those data-only types to torch's allow-list; it
runs when ``involution_mm`` is imported (so ``custom_imports=dict(imports=['involution_mm'])``
in a config is enough). The loading stays ``weights_only=True``: no arbitrary code runs.
:func:`load_checkpoint_file` is the one loader of this project (the converter uses it): it
checks that the file exists first and names it in every error.
"""
import os
import os.path as osp
import pickle
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


def _is_remote(filename):
    return '://' in str(filename)


def check_checkpoint_file(filename):
    """Raises FileNotFoundError naming ``filename`` unless it is an existing local file."""
    path = osp.expanduser(os.fspath(filename))
    if not osp.isfile(path):
        where = osp.abspath(path)
        raise FileNotFoundError(
            f'checkpoint file not found: {filename!r} (looked for {where}). Nothing is '
            'downloaded: give the path of a local checkpoint file.')
    return path


def load_checkpoint_file(filename, map_location='cpu', trusted=False):
    """Loads a local checkpoint file with ``weights_only=True`` and the allow-list above.

    Args:
        filename (str | os.PathLike): a local file.
        map_location: as in :func:`torch.load`. Default 'cpu'.
        trusted (bool): if the file holds other Python objects, load it with
            ``weights_only=False`` (this runs code from the file: only for files you trust).
            Default False: such a file raises an error that names it and the offending type.

    Returns:
        Whatever the file holds (usually a dict with 'state_dict').
    """
    path = check_checkpoint_file(filename)
    install_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        raise RuntimeError(
            f'{path}: this checkpoint holds Python objects outside the weights-only '
            f'allow-list, so it was not loaded ({str(err).splitlines()[0]}). If you trust '
            'the file, load it with trusted=True (converter: --trusted).') from err
    except Exception as err:
        raise RuntimeError(f'{path}: cannot read this checkpoint file: {err}') from err


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
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = OrderedDict((k[len('module.'):], v) for k, v in state_dict.items())
    return OrderedDict(state_dict)
