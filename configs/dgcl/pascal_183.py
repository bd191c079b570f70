r"""DGCL on Pascal VOC 2012 classic, 183 labeled images: labeled from the 1464
fine images, unlabeled from the 10582-image set.

Command (SPLITS: the standard split lists; EXTRACTED_DIR, TFDS_DIR: as for DDFP's VOC
configs, configs/ddfp/pascal_183.py; the classic lists need the blended set prepared):
  python main.py --config configs/dgcl/pascal_183.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/183
The release's quirks: --config configs/dgcl/pascal_183.py:release.

Published (validation mIoU %, DeepLabV3+ / ResNet-101, as RankMatch quotes DGCL): DGCL
mIoU 77.1.

Schedule: 80 epochs. With the standard list's unlabeled images at the global batch of
16: 649 steps per epoch, 51920 steps in all.

Shared settings, paper-vs-release switches and known differences: configs/dgcl/tables.py.
"""
from configs.dgcl import tables


def get_config(variant: str = "paper"):
  return tables.pascal(num_labeled=183, variant=variant)
