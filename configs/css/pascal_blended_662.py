r"""CSS on Pascal VOC 2012 blended, 1/16 split: 662 labeled images from the
10582-image set with SBD labels, the rest unlabeled.

Command (SPLITS, EXTRACTED_DIR, TFDS_DIR as for configs/ddfp/pascal_blended_1_16.py):
  python main.py --config configs/css/pascal_blended_662.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/662
The cross variant: :cross; the release's behaviour: :release or :cross_release.

Published (validation mIoU %, DeepLabV3+ / ResNet-101 with deep stem, paper Table 2,
U2PL splits): CSS (mix) 78.73.

Shared settings, paper-vs-release switches and known differences: configs/css/tables.py.
"""
from configs.css import tables


def get_config(variant: str = "mix"):
  return tables.pascal_blended(num_labeled=662, variant=variant)
