"""The registry glue of involution_mm, all in one place.

* ``MODELS``: the registry node of scope ``involution_mm``, a child of mmengine's root
  ``MODELS``. From an mmdet/mmseg/mmpretrain config, ``type='involution_mm.RedNet'`` works
  without importing anything: mmengine imports ``involution_mm.registry`` (this module) for
  the unknown scope, finds this node under the root and imports its ``locations``.
* ``HOOKS``: the same for training hooks (:mod:`involution_mm.engine`).
* :func:`register_downstream`: after ``import involution_mm`` (e.g. through
  ``custom_imports=dict(imports=['involution_mm'], allow_failed_imports=False)``), the same
  classes are also registered under their short names in the MODELS registries of mmdet,
  mmseg and mmpretrain, those of them that import; a package that is missing or fails to
  import is skipped (see :data:`DOWNSTREAM_STATUS`).
"""
import importlib
import warnings

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

SCOPE = 'involution_mm'

MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE,
                  locations=['involution_mm.models'])

#: the hooks of involution_mm (``type='involution_mm.RNGStateHook'`` from any scope)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['involution_mm.engine'])

#: downstream scope -> names of the classes of :data:`MODELS` it receives
DOWNSTREAM_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')

#: scope -> 'registered: ...' or 'skipped: <reason>' after :func:`register_downstream`
DOWNSTREAM_STATUS = {}


def _wanted(scope, cls):
    targets = getattr(cls, '_involution_mm_scopes', DOWNSTREAM_SCOPES)
    return scope in targets


def register_downstream(scopes=DOWNSTREAM_SCOPES):
    """Registers every class of :data:`MODELS` into ``<scope>.registry.MODELS``.

    A class can restrict its targets with a ``_involution_mm_scopes`` attribute (the mmdet
    heads go to mmdet only). A name that the downstream registry already holds for another
    class is left alone, with a warning (``involution_mm.<name>`` still works).
    Returns :data:`DOWNSTREAM_STATUS`.
    """
    for scope in scopes:
        try:
            downstream = importlib.import_module(f'{scope}.registry').MODELS
        except Exception as err:  # missing, or fails at import (e.g. a version assertion)
            DOWNSTREAM_STATUS[scope] = f'skipped: {type(err).__name__}: {err}'
            continue
        done = []
        for name, cls in list(MODELS.module_dict.items()):
            if not _wanted(scope, cls):
                continue
            existing = downstream.module_dict.get(name)
            if existing is not None and existing is not cls:
                warnings.warn(
                    f'involution_mm: {scope} already registers {name!r} '
                    f'({existing.__module__}); use type="involution_mm.{name}" for ours')
                continue
            downstream.register_module(name=name, module=cls, force=True)
            done.append(name)
        DOWNSTREAM_STATUS[scope] = 'registered: ' + ', '.join(done)
    return DOWNSTREAM_STATUS
