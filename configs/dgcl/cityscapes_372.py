r"""DGCL on Cityscapes, 372 of the 2975 training images labeled (the release's own
config), the rest unlabeled.

Command (SPLITS: the standard split lists; EXTRACTED_DIR, TFDS_DIR: as for DDFP's
Cityscapes configs, configs/ddfp/cityscapes_1_8.py):
  python main.py --config configs/dgcl/cityscapes_372.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/cityscapes/372
The release's quirks: --config configs/dgcl/cityscapes_372.py:release.

Published: DGCL's Cityscapes numbers were not available (configs/dgcl/tables.py).

Schedule: 200 epochs (10 supervised). With the standard list's unlabeled images at the
global batch of 16: 162 steps per epoch, 32400 steps in all.

Shared settings, paper-vs-release switches and known differences: configs/dgcl/tables.py.
"""
from configs.dgcl import tables


def get_config(variant: str = "paper"):
  return tables.cityscapes(num_labeled=372, variant=variant)
