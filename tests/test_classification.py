"""Classification on the embedded data: the synthetic ImageNet-format dataset, read by
mmpretrain's ImageNet and CustomDataset alike, the demo config that matches it, and
tools/train.py + tools/test.py training RedNet-26 on it to a top-1 above chance (as a user
runs them, in subprocesses). The tests that need mmpretrain.models skip where it does not
import (no torchvision)."""
import os
import os.path as osp
import re

import cv2
import pytest
from mmengine.config import Config

from involution_mm.datasets import IMAGENET_SYNTH_CLASSES, make_synthetic_imagenet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def read_meta(root, split):
    with open(osp.join(root, 'meta', f'{split}.txt')) as f:
        return [(name, int(label)) for name, label in (line.split() for line in f)]


def test_synthetic_imagenet_layout_is_balanced_and_labelled_by_folder(synthetic_imagenet):
    root = synthetic_imagenet
    with open(osp.join(root, 'meta', 'classes.txt')) as f:
        assert tuple(f.read().split('\n')[:-1]) == IMAGENET_SYNTH_CLASSES
    assert list(IMAGENET_SYNTH_CLASSES) == sorted(IMAGENET_SYNTH_CLASSES)
    for split, count in (('train', 512), ('val', 128)):
        samples = read_meta(root, split)
        assert len(samples) == count
        for name, label in samples:
            assert name.split('/')[0] == IMAGENET_SYNTH_CLASSES[label], name
        assert sorted(os.listdir(osp.join(root, split))) == list(IMAGENET_SYNTH_CLASSES)
        for cls in IMAGENET_SYNTH_CLASSES:
            assert len(os.listdir(osp.join(root, split, cls))) == count // 4
    img = cv2.imread(osp.join(root, 'val', samples[0][0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32, 3)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=5), 'num_classes must be 2 to 4'),
    (dict(num_classes=1), 'num_classes must be 2 to 4'),
    (dict(num_train=10), 'num_train must be a positive multiple of num_classes'),
    (dict(num_val=0), 'num_val must be a positive multiple'),
    (dict(size=8), 'size must be at least 16'),
], ids=['5_classes', '1_class', 'train_not_balanced', 'no_val', 'tiny'])
def test_bad_generator_arguments_raise_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_imagenet(str(tmp_path / 'x'), **kwargs)
    assert not (tmp_path / 'x').exists()


def test_generator_cli_refuses_a_bad_class_count_and_keeps_the_old_data(tmp_path, capsys):
    import runpy
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'dataset_converters',
                                   'make_synthetic_data.py'))
    args = ['--out-dir', str(tmp_path), '--only', 'imagenet', '--imagenet-train', '8',
            '--imagenet-val', '4']
    assert tool['main'](args) == 0
    before = read_meta(str(tmp_path / 'synthetic_imagenet'), 'train')
    assert tool['main'](args + ['--imagenet-classes', '5']) == 2
    assert 'error: num_classes must be 2 to 4' in capsys.readouterr().err
    assert read_meta(str(tmp_path / 'synthetic_imagenet'), 'train') == before
    assert sorted(os.listdir(tmp_path)) == ['synthetic_imagenet']


def test_demo_config_classes_are_the_generator_classes():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'rednet26_synthetic_cls.py'))
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        assert tuple(loader.dataset.metainfo.classes) == IMAGENET_SYNTH_CLASSES
    n = len(IMAGENET_SYNTH_CLASSES)
    assert cfg.model.head.num_classes == cfg.model.head.loss.num_classes == n
    assert cfg.data_preprocessor.num_classes == n
    assert cfg.model.backbone.init_cfg is None and not cfg.get('load_from')


def test_imagenet_and_custom_dataset_read_the_same_samples(synthetic_imagenet,
                                                          mmpretrain_models):
    from mmpretrain.datasets import CustomDataset, ImageNet
    by_meta = ImageNet(data_root=synthetic_imagenet, split='val',
                       metainfo=dict(classes=IMAGENET_SYNTH_CLASSES))
    by_folder = CustomDataset(data_root=synthetic_imagenet, data_prefix='val')
    assert by_folder.CLASSES == IMAGENET_SYNTH_CLASSES
    assert by_meta.ann_file.endswith(osp.join('meta', 'val.txt'))

    def samples(dataset):
        return sorted((d['img_path'], d['gt_label']) for d in dataset.load_data_list())
    assert samples(by_meta) == samples(by_folder)
    assert len(by_meta) == 128


@pytest.mark.slow
def test_train_and_test_tools_learn_above_chance(tmp_path, synthetic_imagenet,
                                                 mmpretrain_models, tools):
    """RedNet-26 from scratch, the demo config with a shorter schedule: tools/test.py prints
    the top-1 of the val split, above chance (25%) by far more than the noise of 128
    images."""
    iters = 60
    data = tools.cls_data_options(synthetic_imagenet)
    train = tools.run_tool(['tools/train.py', tools.CLS_DEMO, '--work-dir', str(tmp_path),
                            '--cfg-options'] + data + tools.schedule_options(iters, log_interval=10)
                           + [f'param_scheduler.1.end={iters}'])
    assert train.returncode == 0, train.stdout[-4000:]
    ckpt = tmp_path / f'iter_{iters}.pth'
    assert ckpt.exists(), train.stdout[-3000:]
    test = tools.run_tool(['tools/test.py', tools.CLS_DEMO, str(ckpt), '--work-dir',
                           str(tmp_path / 'test'), '--out', str(tmp_path / 'preds.pkl'),
                           '--cfg-options'] + data)
    assert test.returncode == 0, test.stdout[-4000:]
    top1 = re.search(r'RESULT top1=([\d.]+)', test.stdout)
    assert top1 and 'accuracy/top1' in test.stdout, test.stdout[-3000:]
    assert float(top1.group(1)) > 40, test.stdout[-2000:]
    assert (tmp_path / 'preds.pkl').exists()


def test_train_stops_at_once_on_a_missing_dataset_folder(tmp_path, tools):
    missing = tmp_path / 'no_such_data'
    r = tools.run_tool(['tools/train.py', tools.SEG_DEMO, '--work-dir', str(tmp_path / 'w'),
                        '--cfg-options', f'train_dataloader.dataset.data_root={missing}'])
    assert r.returncode == 2, r.stdout[-3000:]
    assert f"dataset folder not found: train_dataloader.dataset.data_root = '{missing}'" \
        in r.stdout
    assert 'make_synthetic_data.py' in r.stdout and 'Traceback' not in r.stdout


def test_classifier_with_another_class_count_than_its_data_stops_at_once(
        tmp_path, synthetic_imagenet, mmpretrain_models, tools):
    r = tools.run_tool(['tools/train.py', tools.CLS_DEMO, '--work-dir', str(tmp_path),
                        '--cfg-options', 'model.head.num_classes=3']
                       + tools.cls_data_options(synthetic_imagenet))
    assert r.returncode == 2, r.stdout[-3000:]
    assert 'model.head.num_classes = 3, but train_dataloader.dataset.metainfo names 4 ' \
        'classes (cross, disc, square, triangle)' in r.stdout
    assert 'Traceback' not in r.stdout
