"""Small synthetic datasets in the layouts of COCO, Cityscapes and ImageNet (see
:mod:`.synthetic`)."""
from .synthetic import (CITYSCAPES_SYNTH_CLASSES, COCO_CATEGORIES, COCO_SYNTH_CLASSES,
                        IMAGENET_SYNTH_CLASSES, make_synthetic_cityscapes, make_synthetic_coco,
                        make_synthetic_imagenet)

__all__ = ['COCO_CATEGORIES', 'COCO_SYNTH_CLASSES', 'CITYSCAPES_SYNTH_CLASSES',
           'IMAGENET_SYNTH_CLASSES', 'make_synthetic_coco', 'make_synthetic_cityscapes',
           'make_synthetic_imagenet']
