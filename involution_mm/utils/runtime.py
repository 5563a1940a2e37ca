"""What ``tools/train.py`` and ``tools/test.py`` do around mmengine's Runner.

One pair of tools serves mmdet, mmseg and mmpretrain configs (the config's
``default_scope`` says which), and the same config runs unchanged on GPUs and on a CPU-only
machine:

* :func:`adapt_cfg_to_machine`: without CUDA, SyncBN becomes BN (SyncBN needs CUDA, also
  under gloo), the NCCL backend becomes gloo, and the DDP wrapper gets no device ids.
* :func:`init_cpu_distributed`: without CUDA, the process group (gloo) is started here,
  because mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first, which a CPU build
  of torch does not have.
* :func:`check_checkpoint_files`: every checkpoint a run will read (backbone ``init_cfg``
  of type Pretrained, ``pretrained``, ``load_from``, ``--resume``, the test checkpoint) is
  checked before anything is built, so a missing, truncated, foreign or unsafe file, or one
  whose weights do not fit the config, stops the run at once with a line that names the
  file, the config key and what is wrong (nothing is downloaded).
* :func:`check_scope_available`: an mmpretrain config on a machine where
  ``mmpretrain.models`` does not import (no torchvision) stops with that reason.
* :func:`check_datasets`: a dataset folder the run would read that is missing, or a
  classifier whose number of classes is not the number its dataset names, stops the run
  before anything is built (mmengine would fail later, deep in a traceback).
"""
import importlib
import os
import os.path as osp
import re
import subprocess
from collections import OrderedDict
from datetime import timedelta

import torch

from .checkpoint import (CheckpointError, CheckpointNotFoundError, build_model_from_config,
                         compare_state_dict, describe_misfit, load_state_dict_file,
                         state_shapes)

#: the norm types that need CUDA (torch's SyncBatchNorm, mmcv's SyncBatchNorm)
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'TorchSyncBN', 'SyncBatchNorm', 'nn.SyncBatchNorm')

#: environment variable that lets URLs through :func:`check_checkpoint_files`
ALLOW_DOWNLOAD_ENV = 'INVOLUTION_MM_ALLOW_DOWNLOAD'

CONVERT_HINT = (
    'Nothing is downloaded by these tools. To use the official ImageNet-pretrained RedNet, '
    'download its checkpoint from https://github.com/d-li14/involution (README, "ImageNet '
    'Classification", e.g. rednet50-1c2ff5a8.pth for RedNet-50) and convert it:\n'
    '    python tools/convert_official_checkpoint.py rednet50-1c2ff5a8.pth {path}\n'
    'or train from scratch without it: --cfg-options model.backbone.init_cfg=None')
LOAD_HINT = (
    'Give an existing local checkpoint: one written by tools/train.py (work_dirs/...), or '
    'an official RedNet detection/segmentation model converted with\n'
    '    python tools/convert_official_checkpoint.py OFFICIAL.pth {path} --config CONFIG')


class UnsupportedSetupError(RuntimeError):
    """The run asks for something this machine cannot do (AMP without CUDA, mmpretrain
    without torchvision); the message says what and why."""


class DatasetError(UnsupportedSetupError):
    """A dataset of the config is missing or does not fit the model; the message names the
    config key and the folder."""


#: how to make the datasets of configs/demo/ (they point at data/synthetic_*)
DATA_HINT = ('The demo configs read the synthetic datasets under data/: make them with\n'
             '    python tools/dataset_converters/make_synthetic_data.py\n'
             'or point the config at your copy: --cfg-options {key}=PATH')


def cuda_available():
    return torch.cuda.is_available()


def config_scope(cfg):
    """'mmdet', 'mmseg', 'mmpretrain' or whatever ``default_scope`` the config sets."""
    return cfg.get('default_scope', None) or 'mmengine'


def check_scope_available(cfg):
    """Raises :class:`UnsupportedSetupError` if the models of the config's scope do not
    import here (mmpretrain.models needs torchvision)."""
    scope = config_scope(cfg)
    if scope not in ('mmdet', 'mmseg', 'mmpretrain'):
        return
    try:
        importlib.import_module(f'{scope}.models')
    except Exception as err:
        extra = ''
        if scope == 'mmpretrain':
            extra = (' mmpretrain.models imports torchvision, which has no build for this '
                     'CPU torch; classification configs run where torchvision installs.')
        raise UnsupportedSetupError(
            f'this is an {scope} config, but {scope}.models does not import here '
            f'({type(err).__name__}: {err}).{extra}') from err


# ---------------------------------------------------------------------------- device

def _walk(node, fn):
    """Calls fn(dict) for every dict inside node (dicts and lists, recursively)."""
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _walk(value, fn)


def replace_sync_bn(cfg_node):
    """Replaces every ``type=SyncBN`` (and mmcv's MMSyncBN) by ``BN`` in a config (in
    place); returns how many were replaced."""
    count = [0]

    def fn(d):
        if d.get('type') in SYNC_BN_TYPES:
            d['type'] = 'BN'
            count[0] += 1

    _walk(cfg_node, fn)
    return count[0]


def drop_pretrained(cfg_node):
    """Sets every Pretrained ``init_cfg`` (alone or in a list) and every ``pretrained`` path in
    a config to None (in place), for tools that must not read the config's pretraining file."""
    def is_pretrained(v):
        return isinstance(v, dict) and v.get('type') == 'Pretrained'

    def fn(d):
        for key, value in d.items():
            if key == 'init_cfg' and any(
                    map(is_pretrained, value if isinstance(value, list) else [value])):
                d[key] = None
            elif key == 'pretrained' and isinstance(value, str):
                d[key] = None

    _walk(cfg_node, fn)


def adapt_cfg_to_machine(cfg, launcher='none', amp=False):
    """Makes a published (GPU) config run here, in place. Returns notes of what changed.

    With CUDA nothing changes. Without CUDA: SyncBN -> BN (mmengine reverts SyncBN only for
    non-distributed runs, and SyncBN needs CUDA in distributed ones too), NCCL -> gloo, and
    for distributed runs a DDP wrapper without device ids (CPU modules).
    ``amp=True`` without CUDA raises :class:`UnsupportedSetupError`: mmengine's
    AmpOptimWrapper asserts CUDA.
    """
    notes = []
    if cuda_available():
        return notes
    if amp:
        raise UnsupportedSetupError(
            '--amp needs a CUDA GPU: mmengine\'s AmpOptimWrapper supports CUDA only, and '
            'torch.cuda.is_available() is False here. Run without --amp on CPU.')
    n = replace_sync_bn(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg)
    if n:
        notes.append(f'no CUDA: {n} SyncBN norm config(s) -> BN')
    if cfg.get('sync_bn', None):
        cfg.sync_bn = None
        notes.append('no CUDA: sync_bn conversion disabled')
    env_cfg = cfg.get('env_cfg', None)
    if env_cfg is None:
        cfg.env_cfg = env_cfg = dict()
    dist_cfg = env_cfg.get('dist_cfg', None)
    if dist_cfg is None:
        env_cfg['dist_cfg'] = dist_cfg = dict()
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        notes.append(f"no CUDA: distributed backend {dist_cfg.get('backend', 'nccl')!r} -> "
                     "'gloo'")
        dist_cfg['backend'] = 'gloo'
    if env_cfg.get('cudnn_benchmark'):
        env_cfg['cudnn_benchmark'] = False
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg', None)
        if wrapper is None:
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
            notes.append('no CUDA: DDP on CPU modules (device_ids=None)')
        elif wrapper.get('type', 'MMDistributedDataParallel') in (
                'MMDistributedDataParallel', 'DistributedDataParallel'):
            wrapper['device_ids'] = None
    return notes


def _slurm_master_addr():
    nodelist = os.environ.get('SLURM_NODELIST') or os.environ.get('SLURM_JOB_NODELIST')
    if not nodelist:
        return '127.0.0.1'
    try:
        out = subprocess.run(['scontrol', 'show', 'hostname', nodelist], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[0]
    except Exception:
        return nodelist.split(',')[0]


def init_cpu_distributed(launcher, backend='gloo', timeout=None):
    """Starts the gloo process group for ``launcher`` (pytorch/slurm/mpi) on a machine
    without CUDA, from the environment the launcher sets; a no-op with CUDA (mmengine does
    it then), for launcher 'none', or if a group exists. Returns True if it started one."""
    import torch.distributed as dist
    if launcher == 'none' or cuda_available() or not dist.is_available() \
            or dist.is_initialized():
        return False
    env = os.environ
    if launcher == 'pytorch':
        rank, world, local = env.get('RANK'), env.get('WORLD_SIZE'), env.get('LOCAL_RANK')
        if rank is None or world is None:
            raise UnsupportedSetupError(
                '--launcher pytorch expects RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in the '
                'environment: start it with torchrun (tools/dist_train.sh)')
    elif launcher == 'slurm':
        rank, world, local = env['SLURM_PROCID'], env['SLURM_NTASKS'], env.get('SLURM_LOCALID')
        env.setdefault('MASTER_PORT', '29500')
        env.setdefault('MASTER_ADDR', _slurm_master_addr())
    elif launcher == 'mpi':
        rank = env.get('OMPI_COMM_WORLD_RANK', env.get('PMI_RANK'))
        world = env.get('OMPI_COMM_WORLD_SIZE', env.get('PMI_SIZE'))
        local = env.get('OMPI_COMM_WORLD_LOCAL_RANK', env.get('MPI_LOCALRANKID', '0'))
        env.setdefault('MASTER_PORT', '29500')
        env.setdefault('MASTER_ADDR', '127.0.0.1')
    else:
        raise ValueError(f'unknown launcher {launcher!r}')
    env['RANK'], env['WORLD_SIZE'] = str(rank), str(world)
    env['LOCAL_RANK'] = str(local if local is not None else 0)
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = timedelta(seconds=timeout)
    dist.init_process_group(backend=backend, rank=int(rank), world_size=int(world), **kwargs)
    return True


def prepare_run(cfg, launcher='none', training=True, amp=False):
    """What tools/train.py and tools/test.py do before building the runner: check that the
    config's scope imports, adapt the config to this machine, check the checkpoint files
    the run will read, and start CPU distributed training where needed. Returns the notes
    of what was adapted (for the runner's log)."""
    check_scope_available(cfg)
    notes = adapt_cfg_to_machine(cfg, launcher, amp=amp)
    if training:
        add_rng_state_hook(cfg)
    check_checkpoint_files(cfg, training=training)
    check_datasets(cfg, training=training)
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    init_cpu_distributed(launcher, dist_cfg.get('backend', 'gloo'), dist_cfg.get('timeout', None))
    return notes


def check_datasets(cfg, training=True):
    """Raises :class:`DatasetError` if the ``data_root`` of a dataloader the run uses (train,
    and val where the config validates, when ``training``; else test) is no folder, or if
    an mmpretrain classifier's ``head.num_classes`` differs from the number of classes its
    dataset's metainfo names."""
    # mmengine validates only with all three of val_dataloader, val_cfg and val_evaluator
    validates = all(cfg.get(k, None) is not None for k in ('val_cfg', 'val_evaluator'))
    loaders = ['test_dataloader']
    if training:
        loaders = ['train_dataloader'] + (['val_dataloader'] if validates else [])
    head = cfg.get('model', {}).get('head', None)
    num_classes = head.get('num_classes', None) if isinstance(head, dict) else None
    for loader_key in loaders:
        dataset = (cfg.get(loader_key, None) or {}).get('dataset', None) or {}
        root = dataset.get('data_root', None)
        if root and not _is_url(root) and not osp.isdir(osp.expanduser(str(root))):
            key = f'{loader_key}.dataset.data_root'
            raise DatasetError(
                f'dataset folder not found: {key} = {root!r} (looked for '
                f'{osp.abspath(osp.expanduser(str(root)))}). ' + DATA_HINT.format(key=key))
        classes = (dataset.get('metainfo', None) or {}).get('classes', None)
        if config_scope(cfg) == 'mmpretrain' and classes and num_classes is not None \
                and len(classes) != num_classes:
            raise DatasetError(
                f'model.head.num_classes = {num_classes}, but {loader_key}.dataset.metainfo '
                f'names {len(classes)} classes ({", ".join(classes)}): set both to the same '
                'number')


def add_rng_state_hook(cfg):
    """Adds :class:`involution_mm.engine.RNGStateHook` to ``cfg.custom_hooks`` (once), so that
    a run resumed from a checkpoint of these tools continues exactly."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(str(h.get('type', '')).endswith('RNGStateHook') for h in hooks):
        hooks.append(dict(type='involution_mm.RNGStateHook'))
    cfg.custom_hooks = hooks


def build_runner(cfg, notes=()):
    """The mmengine runner of ``cfg`` (its ``runner_type`` if set), with ``notes`` logged."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    for note in notes:
        runner.logger.info(f'involution_mm: {note}')
    return runner


def finish_distributed():
    """Waits for every rank, then closes the process group, so that no rank exits while
    another still talks to it (with gloo, a peer that closes its connections early can make
    the others abort at exit)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------ checkpoints

def _is_url(path):
    return '://' in str(path)


def pretrained_checkpoints(cfg):
    """(config key, path) of every checkpoint that initialising ``cfg.model`` reads."""
    found = []

    def visit(node, key):
        if isinstance(node, dict):
            if node.get('type') == 'Pretrained' and node.get('checkpoint'):
                found.append((key + '.checkpoint', node['checkpoint']))
            pretrained = node.get('pretrained')
            if isinstance(pretrained, str) and pretrained:
                found.append((key + '.pretrained', pretrained))
            for k, v in node.items():
                visit(v, f'{key}.{k}')
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f'{key}[{i}]')

    visit(cfg.get('model', {}), 'model')
    return found


def _init_cfg_target(key):
    """The module path that an ``init_cfg`` Pretrained entry at config key ``key`` loads
    into ('model.backbone.init_cfg.checkpoint' -> 'backbone', 'model.init_cfg...' -> ''),
    or None where the key is no init_cfg (e.g. ``pretrained``)."""
    found = re.match(r'^model((?:\.\w+|\[\d+\])*?)\.init_cfg(?:\[\d+\])?\.checkpoint$', key)
    if found is None:
        return None
    return re.sub(r'\[(\d+)\]', r'.\1', found.group(1)).strip('.')


def _fit_error(key, path, why):
    return CheckpointError(f'{key} = {str(path)!r}: its weights do not fit the model of this '
                           f'config: {why}')


def _check_fit(key, path, state_dict, expected, exact):
    """Raises :class:`CheckpointError` if ``state_dict`` does not fit ``expected`` (name ->
    shape): with ``exact`` (testing, resuming) every name and shape must match; otherwise
    (load_from, pretrained init; mmengine loads those non-strictly, e.g. to fine-tune to
    other classes) at least one tensor must fit."""
    fit = compare_state_dict(state_dict, expected)
    if exact and describe_misfit(fit):
        raise _fit_error(key, path, describe_misfit(fit))
    if not exact and not fit['mapped']:
        hint = ''
        for prefix in sorted({k.split('.')[0] + '.' for k in state_dict if '.' in k}):
            stripped = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                   if k.startswith(prefix))
            if compare_state_dict(stripped, expected)['mapped']:
                hint = f" (without the prefix {prefix!r}, some would: set prefix='{prefix}')"
                break
        first_file = ', '.join(list(state_dict)[:2])
        first_model = ', '.join(list(expected)[:2])
        raise _fit_error(key, path, f'not one tensor fits (the file has {first_file}, ...; '
                         f'the model {first_model}, ...){hint}')


def check_checkpoint_files(cfg, training=True, extra=()):
    """Raises :class:`CheckpointError` for the first checkpoint the run would read that
    cannot be used, before anything is built: the model's pretrained weights (when
    ``training``; a test loads a whole checkpoint instead), ``cfg.load_from`` (or, resuming
    without a path, the work dir's latest checkpoint) and ``extra`` ((what, path) pairs).

    Each file must exist locally (URLs are refused, as they would hang or fail on a machine
    without network, unless the environment sets ``INVOLUTION_MM_ALLOW_DOWNLOAD=1``), be a
    complete ``torch.save`` file holding only allow-listed data (nothing in it runs), and
    its weights must fit the config's model, which is built on the meta device (names and
    shapes, no memory) to compare them: exactly for a test checkpoint or resuming, at least
    one tensor for ``load_from`` and pretrained inits (mmengine loads those non-strictly).
    """
    items = []  # (key, path, hint, how the weights must fit: 'exact'|'partial'|module path)
    if training:
        for key, path in pretrained_checkpoints(cfg):
            target = _init_cfg_target(key)
            items.append((key, path, CONVERT_HINT, target))
    exact = not training or bool(cfg.get('resume', False))
    if cfg.get('load_from', None):
        items.append(('load_from', cfg.load_from, LOAD_HINT, 'exact' if exact else 'partial'))
    elif training and cfg.get('resume', False) is True and cfg.get('work_dir', None):
        from mmengine.runner import find_latest_checkpoint
        latest = find_latest_checkpoint(cfg.work_dir)
        if latest:
            items.append(('--resume (latest checkpoint of the work dir)', latest, LOAD_HINT,
                          'exact'))
    items += [(k, p, LOAD_HINT, 'exact') for k, p in extra]
    allow_urls = os.environ.get(ALLOW_DOWNLOAD_ENV, '') == '1'
    loaded = []
    for key, path, hint, how in items:
        if _is_url(path):
            if allow_urls:
                continue
            raise CheckpointNotFoundError(
                f'{key} = {path!r} is a URL. These tools read local files only (set '
                f'{ALLOW_DOWNLOAD_ENV}=1 to let mmengine download it). '
                + hint.format(path='LOCAL.pth'))
        if not osp.isfile(osp.expanduser(str(path))):
            raise CheckpointNotFoundError(
                f'checkpoint file not found: {key} = {path!r} (looked for '
                f'{osp.abspath(osp.expanduser(str(path)))}).\n' + hint.format(path=path))
        try:
            loaded.append((key, path, how, load_state_dict_file(osp.expanduser(str(path)))))
        except CheckpointError as err:
            raise CheckpointError(f'{key}: {err}') from None
    if not any(how is not None for _, _, how, _ in loaded):
        return
    model = build_model_from_config(cfg, device='meta')
    for key, path, how, state_dict in loaded:
        if how in ('exact', 'partial'):
            _check_fit(key, path, state_dict, state_shapes(model), exact=how == 'exact')
            continue
        if how is None:
            continue
        try:
            module = model.get_submodule(how) if how else model
        except AttributeError:
            continue  # a config path that is no attribute path: mmengine reports misfits
        node = _config_node(cfg, key)
        prefix = node.get('prefix', None) if isinstance(node, dict) else None
        if prefix:
            kept = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                               if k.startswith(prefix))
            if not kept:
                raise _fit_error(key, path, f'no key starts with its prefix {prefix!r} (the '
                                 f"file has {', '.join(list(state_dict)[:2])}, ...)")
            state_dict = kept
        _check_fit(key, path, state_dict, state_shapes(module), exact=False)


def _config_node(cfg, key):
    """The dict at config key ``key`` minus its last part ('model.backbone.init_cfg' of
    'model.backbone.init_cfg.checkpoint')."""
    node = cfg
    for part in re.findall(r'\w+|\[\d+\]', key)[:-1]:
        node = node[int(part[1:-1])] if part.startswith('[') else node[part]
    return node


# ----------------------------------------------------------------------------- metrics

#: the headline metric(s) of each task, in the order printed
HEADLINE_KEYS = ('coco/bbox_mAP', 'coco/segm_mAP', 'bbox_mAP', 'segm_mAP', 'mIoU',
                 'accuracy/top1')


def headline_metrics(metrics):
    """{short name: value} of the main metrics (bbox_mAP, segm_mAP, mIoU, top1)."""
    out = {}
    for key in HEADLINE_KEYS:
        if key in metrics:
            value = metrics[key]
            if hasattr(value, 'item') and getattr(value, 'ndim', 0) == 0:
                value = value.item()
            out[key.split('/')[-1]] = value
    return out


def format_metrics(metrics, title='results'):
    lines = [f'===== {title} =====']
    for key, value in metrics.items():
        if hasattr(value, 'item') and getattr(value, 'ndim', 0) == 0:
            value = value.item()  # numpy/torch scalars (mmseg's mIoU is a numpy float)
        if isinstance(value, float):
            value = f'{value:.4f}'
        lines.append(f'{key}: {value}')
    head = headline_metrics(metrics)
    if head:
        lines.append('RESULT ' + ' '.join(
            f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in head.items()))
    return '\n'.join(lines)
