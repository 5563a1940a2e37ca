"""Small, learnable synthetic datasets in the exact layouts of COCO, Cityscapes and ImageNet.

Nothing can be downloaded on the machines this project is developed on, so the demo, the
tool tests and the distributed test train on data made here. The files are what the stock
dataset classes and metrics read, unchanged:

* COCO instances (mmdet ``CocoDataset``, ``CocoMetric`` bbox+segm)::

    <root>/annotations/instances_train2017.json, instances_val2017.json
    <root>/train2017/000000000001.jpg ...   <root>/val2017/...

  The json holds the 80 real COCO categories with their real ids; the objects are simple
  shapes of 4 of them, each with its own shape and colour: ``stop sign`` (id 13, red
  octagon), ``sports ball`` (id 37, orange disc), ``kite`` (id 38, green diamond), ``tv``
  (id 72, blue landscape rectangle). Masks are polygons (the exact outlines drawn).
* Cityscapes semantic segmentation (mmseg ``CityscapesDataset``, ``IoUMetric``)::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

  Street scenes (sky, buildings, trees, sidewalk, road, cars, people, the ego vehicle at
  the bottom) with the real Cityscapes label ids and train ids (19 classes; the ego vehicle
  is ``labelId 1`` / ``trainId 255``, ignored like in the real data).
* ImageNet classification (mmpretrain ``ImageNet`` with ``split``, or ``CustomDataset``
  reading the class sub-folders; ``Accuracy``)::

    <root>/train/<class>/<class>_00001.png ...   <root>/val/<class>/...
    <root>/meta/train.txt, val.txt     lines '<class>/<file> <label>', as ImageNet's
    <root>/meta/classes.txt            the class names in label order

  One shape per image, whose kind is the class (``cross``, ``disc``, ``square``,
  ``triangle``: sorted, so that the folder order of CustomDataset is the label order), of
  random size, position and colour on a noisy background: the colour says nothing about
  the class, the outline does.

Everything is deterministic for a given seed (numpy ``default_rng``) and takes seconds.
"""
import json
import os
import os.path as osp

import numpy as np

#: bumped whenever the generated files change for the same arguments
GENERATOR_VERSION = 1

# ------------------------------------------------------------------------------ COCO

#: the 80 COCO category ids (with the real gaps) in the order of mmdet's CocoDataset
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _coco_names():
    # the names as mmdet spells them; kept here so this module does not need mmdet
    return (
        'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
        'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
        'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
        'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
        'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
        'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl',
        'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza',
        'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet',
        'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
        'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
        'hair drier', 'toothbrush')


COCO_CATEGORIES = [dict(id=i, name=n, supercategory='')
                   for i, n in zip(COCO_IDS, _coco_names())]

#: the categories that appear, in COCO id order (= the label order of a CocoDataset whose
#: metainfo lists these classes): name -> (shape, RGB colour)
COCO_SYNTH_SHAPES = {
    'stop sign': ('octagon', (205, 30, 35)),
    'sports ball': ('disc', (245, 150, 25)),
    'kite': ('diamond', (35, 165, 60)),
    'tv': ('rectangle', (35, 55, 170)),
}
COCO_SYNTH_CLASSES = tuple(COCO_SYNTH_SHAPES)


def _regular_polygon(cx, cy, r, n, phase):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _shape_polygon(shape, cx, cy, s, rng):
    """Outline (N, 2) of a shape of size ~s centred at (cx, cy), in pixel coordinates."""
    if shape == 'disc':
        return _regular_polygon(cx, cy, s / 2, 32, 0.0)
    if shape == 'octagon':
        return _regular_polygon(cx, cy, s / 2, 8, np.pi / 8)
    if shape == 'triangle':  # pointing up, centred on its circumcircle
        return _regular_polygon(cx, cy, s / 2, 3, -np.pi / 2)
    if shape == 'square':
        h = 0.4 * s
        return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h],
                         [cx - h, cy + h]])
    if shape == 'cross':  # a plus sign of arms a third of its size wide
        a, b = 0.5 * s, s / 6
        return np.array([[cx - b, cy - a], [cx + b, cy - a], [cx + b, cy - b], [cx + a, cy - b],
                         [cx + a, cy + b], [cx + b, cy + b], [cx + b, cy + a], [cx - b, cy + a],
                         [cx - b, cy + b], [cx - a, cy + b], [cx - a, cy - b], [cx - b, cy - b]])
    if shape == 'diamond':
        w, h = 0.36 * s, 0.5 * s
        return np.array([[cx, cy - h], [cx + w, cy], [cx, cy + h], [cx - w, cy]])
    if shape == 'rectangle':
        w, h = 0.5 * s, 0.5 * s * rng.uniform(0.55, 0.8)
        return np.array([[cx - w, cy - h], [cx + w, cy - h], [cx + w, cy + h],
                         [cx - w, cy + h]])
    raise ValueError(shape)


def _polygon_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _background(rng, h, w):
    base = rng.uniform(95, 175) + rng.uniform(-12, 12, size=3)
    ramp = np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-15, 15)
    img = base[None, None, :] + ramp + rng.normal(0, 5, size=(h, w, 3))
    return img


def _coco_image(rng, size, min_objects, max_objects, min_frac, max_frac):
    import cv2
    img = _background(rng, size, size)
    objects = []
    boxes = []
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(n):
        name = COCO_SYNTH_CLASSES[int(rng.integers(len(COCO_SYNTH_CLASSES)))]
        shape, colour = COCO_SYNTH_SHAPES[name]
        for _try in range(50):
            s = rng.uniform(min_frac, max_frac) * size
            cx, cy = rng.uniform(s / 2 + 1, size - s / 2 - 1, size=2)
            poly = _shape_polygon(shape, cx, cy, s, rng)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            if all(x1 + 3 < b[0] or b[2] + 3 < x0 or y1 + 3 < b[1] or b[3] + 3 < y0
                   for b in boxes):
                break
        else:
            continue
        boxes.append((x0, y0, x1, y1))
        objects.append((name, poly))
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        col = np.clip(np.array(colour, float) + rng.uniform(-20, 20, size=3), 0, 255)
        shade = rng.normal(0, 6, size=(size, size, 3))
        img = np.where(mask[..., None] > 0, col[None, None, :] + shade, img)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def make_synthetic_coco(root, num_train=256, num_val=48, size=128, seed=0, min_objects=1,
                        max_objects=3, min_frac=0.25, max_frac=0.55):
    """Writes a COCO-format instance dataset under ``root`` (see the module docstring).

    Args:
        root (str): output folder (created).
        num_train, num_val (int): images per split.
        size (int): images are size x size pixels.
        seed (int): the same seed gives the same files.
        min_objects, max_objects (int): objects per image (they do not overlap).
        min_frac, max_frac (float): object size as a fraction of the image side.

    Returns:
        dict: split -> number of images and annotations written.
    """
    import cv2
    rng = np.random.default_rng(seed)
    name2id = {c['name']: c['id'] for c in COCO_CATEGORIES}
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    summary = {}
    image_id = ann_id = 0
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            img, objects = _coco_image(rng, size, min_objects, max_objects, min_frac, max_frac)
            file_name = f'{image_id:012d}.jpg'
            cv2.imwrite(osp.join(root, split, file_name), img[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
            for name, poly in objects:
                ann_id += 1
                x0, y0 = poly.min(0)
                x1, y1 = poly.max(0)
                annotations.append(dict(
                    id=ann_id, image_id=image_id, category_id=name2id[name], iscrowd=0,
                    bbox=[round(float(x0), 2), round(float(y0), 2),
                          round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                    area=round(_polygon_area(poly), 2),
                    segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]]))
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(dict(info=dict(description='involution_mm synthetic COCO', version='1.0',
                                     year=2024),
                           licenses=[], images=images, annotations=annotations,
                           categories=COCO_CATEGORIES), f)
        summary[split] = dict(images=len(images), annotations=len(annotations))
    return summary


# ------------------------------------------------------------------------ Cityscapes

#: the classes drawn: name -> (labelId, trainId), the real Cityscapes ids
CITYSCAPES_SYNTH_CLASSES = {
    'road': (7, 0),
    'sidewalk': (8, 1),
    'building': (11, 2),
    'vegetation': (21, 8),
    'sky': (23, 10),
    'person': (24, 11),
    'car': (26, 13),
    'ego vehicle': (1, 255),
}


def _cityscapes_scene(rng, w, h):
    """(RGB image, trainId map, labelId map) of one street scene."""
    import cv2
    train = np.zeros((h, w), np.uint8)
    img = np.zeros((h, w, 3), np.float64)

    def paint(mask, name, colour, noise=6.0):
        train[mask] = CITYSCAPES_SYNTH_CLASSES[name][1]
        col = np.array(colour, float)
        img[mask] = col + rng.normal(0, noise, size=(int(mask.sum()), 3))

    yy, xx = np.mgrid[0:h, 0:w]
    # sky: a vertical gradient of light blue
    sky = np.ones((h, w), bool)
    train[sky] = CITYSCAPES_SYNTH_CLASSES['sky'][1]
    top = np.array([120, 165, 225]) + rng.uniform(-15, 15, 3)
    img[:] = top + (yy[..., None] / h) * np.array([60, 45, 20]) + rng.normal(0, 3, (h, w, 3))
    horizon = int(h * rng.uniform(0.42, 0.55))
    kerb = horizon + int(h * rng.uniform(0.06, 0.1))
    # buildings standing on the horizon line
    x = int(rng.integers(-w // 8, w // 8))
    while x < w:
        bw = int(rng.integers(w // 8, w // 3))
        if rng.random() < 0.8:
            btop = int(rng.integers(int(0.05 * h), horizon - int(0.1 * h)))
            m = (xx >= x) & (xx < x + bw) & (yy >= btop) & (yy < horizon)
            grey = rng.uniform(75, 150)
            paint(m, 'building', (grey + rng.uniform(0, 30), grey + rng.uniform(-5, 10),
                                  grey - rng.uniform(0, 25)))
            # dark windows stay building
            for wy in range(btop + 4, horizon - 6, 9):
                wm = m & (yy >= wy) & (yy < wy + 4) & ((xx - x) % 10 >= 3) & ((xx - x) % 10 < 7)
                img[wm] *= 0.55
        x += bw + int(rng.integers(0, w // 10))
    # trees: a trunk and an elliptic crown
    for _ in range(int(rng.integers(1, 4))):
        cx = int(rng.integers(0, w))
        cy = int(horizon - rng.uniform(0.08, 0.25) * h)
        ax, ay = int(rng.uniform(0.05, 0.1) * w), int(rng.uniform(0.1, 0.18) * h)
        crown = np.zeros((h, w), np.uint8)
        cv2.ellipse(crown, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        trunk = (abs(xx - cx) <= max(1, ax // 6)) & (yy >= cy) & (yy < horizon)
        paint(crown.astype(bool) | trunk, 'vegetation',
              (rng.uniform(40, 80), rng.uniform(110, 150), rng.uniform(30, 55)), noise=12)
    # sidewalk strip and the road below it
    paint((yy >= horizon) & (yy < kerb), 'sidewalk', (175, 165, 155) + rng.uniform(-15, 15, 3))
    paint(yy >= kerb, 'road', (80, 80, 88) + rng.uniform(-10, 10, 3), noise=5)
    # cars on the road: bigger when nearer (lower)
    for _ in range(int(rng.integers(0, 4))):
        yb = int(rng.uniform(kerb + 0.15 * h, 0.92 * h))
        ch = int((yb - horizon) * rng.uniform(0.45, 0.6))
        cw = int(ch * rng.uniform(1.6, 2.2))
        x0 = int(rng.integers(-cw // 3, w - cw // 2))
        m = (xx >= x0) & (xx < x0 + cw) & (yy >= yb - ch) & (yy < yb)
        colours = [(30, 60, 190), (225, 225, 230), (200, 175, 30), (150, 20, 30)]
        paint(m, 'car', colours[int(rng.integers(len(colours)))], noise=8)
        glass = m & (yy < yb - ch * 0.55) & (xx > x0 + cw * 0.2) & (xx < x0 + cw * 0.8)
        img[glass] = img[glass] * 0.3 + 40
    # people on the sidewalk
    for _ in range(int(rng.integers(0, 4))):
        yb = int(rng.uniform(horizon + 0.03 * h, kerb))
        ph = int((yb - horizon + 0.1 * h) * rng.uniform(1.3, 1.8))
        pw = max(3, int(ph * 0.3))
        x0 = int(rng.integers(0, w - pw))
        m = (xx >= x0) & (xx < x0 + pw) & (yy >= yb - ph) & (yy < yb)
        paint(m, 'person', (rng.uniform(170, 230), rng.uniform(20, 70), rng.uniform(40, 90)),
              noise=10)
        head = m & (yy < yb - ph + ph // 6)
        img[head] = np.array([225, 185, 150]) + rng.normal(0, 5, (int(head.sum()), 3))
    # the ego vehicle's bonnet at the bottom (ignored: trainId 255, like real Cityscapes)
    bonnet = yy >= h - int(0.06 * h) - (abs(xx - w / 2) < w / 3) * int(0.03 * h)
    paint(bonnet, 'ego vehicle', (25, 25, 30), noise=4)

    label_ids = np.zeros_like(train)
    for label_id, train_id in CITYSCAPES_SYNTH_CLASSES.values():
        label_ids[train == train_id] = label_id
    return np.clip(img, 0, 255).astype(np.uint8), train, label_ids


def make_synthetic_cityscapes(root, num_train=128, num_val=24, width=256, height=128, seed=0):
    """Writes a Cityscapes-format semantic dataset under ``root`` (see the module docstring).

    Args:
        root (str): output folder (created).
        num_train, num_val (int): images per split.
        width, height (int): image size (Cityscapes' 2:1 aspect by default).
        seed (int): the same seed gives the same files.

    Returns:
        dict: split -> number of images written.
    """
    import cv2
    rng = np.random.default_rng(seed)
    cities = {'train': ('aachen', 'bochum'), 'val': ('frankfurt', )}
    summary = {}
    for split, count in (('train', num_train), ('val', num_val)):
        for i in range(count):
            city = cities[split][i % len(cities[split])]
            stem = f'{city}_{i:06d}_000019'
            img, train, label_ids = _cityscapes_scene(rng, width, height)
            img_dir = osp.join(root, 'leftImg8bit', split, city)
            gt_dir = osp.join(root, 'gtFine', split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            cv2.imwrite(osp.join(img_dir, f'{stem}_leftImg8bit.png'), img[..., ::-1])
            cv2.imwrite(osp.join(gt_dir, f'{stem}_gtFine_labelTrainIds.png'), train)
            cv2.imwrite(osp.join(gt_dir, f'{stem}_gtFine_labelIds.png'), label_ids)
        summary[split] = dict(images=count)
    return summary


# ------------------------------------------------------------------------- ImageNet

#: the classes, sorted (CustomDataset numbers its class folders in sorted order); each is
#: the shape that its images show
IMAGENET_SYNTH_CLASSES = ('cross', 'disc', 'square', 'triangle')


def _classification_image(rng, shape, size, min_frac, max_frac):
    """One image of ``shape`` in a random colour at a random place, on a noisy background."""
    import cv2
    img = _background(rng, size, size)
    s = rng.uniform(min_frac, max_frac) * size
    cx, cy = rng.uniform(s / 2 + 1, size - s / 2 - 1, size=2)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(_shape_polygon(shape, cx, cy, s, rng)).astype(np.int32)], 1)
    # a colour at least 60 grey levels (summed over RGB: 150) from the background's mean,
    # so that every shape is visible, and nothing else to tell the classes apart
    mean = img.reshape(-1, 3).mean(0)
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - mean).sum() >= 150:
            break
    shade = rng.normal(0, 8, size=(size, size, 3))
    img = np.where(mask[..., None] > 0, colour[None, None, :] + shade, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic_imagenet(root, num_train=1024, num_val=256, size=32, num_classes=4, seed=0,
                            min_frac=0.5, max_frac=0.85):
    """Writes an ImageNet-format classification dataset under ``root`` (see the module
    docstring), the same number of images for every class.

    Args:
        root (str): output folder (created).
        num_train, num_val (int): images per split, multiples of ``num_classes``.
        size (int): images are size x size pixels.
        num_classes (int): the first ``num_classes`` of :data:`IMAGENET_SYNTH_CLASSES`.
        seed (int): the same seed gives the same files.
        min_frac, max_frac (float): shape size as a fraction of the image side.

    Returns:
        dict: split -> number of images written, and the classes.
    """
    import cv2
    if not 2 <= num_classes <= len(IMAGENET_SYNTH_CLASSES):
        raise ValueError(f'num_classes must be 2 to {len(IMAGENET_SYNTH_CLASSES)} (the shapes '
                         f'{IMAGENET_SYNTH_CLASSES}), got {num_classes}')
    for name, count in (('num_train', num_train), ('num_val', num_val)):
        if count <= 0 or count % num_classes:
            raise ValueError(f'{name} must be a positive multiple of num_classes '
                             f'({num_classes}), got {count}')
    if size < 16:
        raise ValueError(f'size must be at least 16 pixels, got {size}')
    classes = IMAGENET_SYNTH_CLASSES[:num_classes]
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'meta', 'classes.txt'), 'w') as f:
        f.write(''.join(name + '\n' for name in classes))
    summary = {}
    for split, count in (('train', num_train), ('val', num_val)):
        lines = []
        for i in range(count):
            label = i % num_classes  # interleaved: every prefix of the list is balanced
            name = classes[label]
            file_name = f'{name}/{name}_{i // num_classes + 1:05d}.png'
            os.makedirs(osp.join(root, split, name), exist_ok=True)
            img = _classification_image(rng, name, size, min_frac, max_frac)
            cv2.imwrite(osp.join(root, split, file_name), img[..., ::-1])
            lines.append(f'{file_name} {label}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
        summary[split] = dict(images=count)
    summary['classes'] = list(classes)
    return summary
