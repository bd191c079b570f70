r"""CSS on Cityscapes, 1/8 split: 372 labeled images from the 2975 fine
training images, the rest unlabeled.

Command (SPLITS, DATA: as for configs/ddfp/cityscapes_1_16.py):
  python main.py --config configs/css/cityscapes_372.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/cityscapes/372
The cross variant: :cross; the release's behaviour (batch 16, LR 0.0064): :release or
:cross_release.

Published (validation mIoU %, DeepLabV3+ / ResNet-101 with deep stem, OHEM, paper Table
3, sliding-window evaluation): CSS (mix) 76.93.

Shared settings, paper-vs-release switches and known differences: configs/css/tables.py.
"""
from configs.css import tables


def get_config(variant: str = "mix"):
  return tables.cityscapes(num_labeled=372, variant=variant)
