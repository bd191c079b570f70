r"""DDFP on Cityscapes, 1/2 split: 1488 of the 2975 training images labeled, the rest
unlabeled (paper, Cityscapes table).

Command (SPLITS: the standard CPS/UniMatch split lists; EXTRACTED_DIR: the extracted
download, see ddfp_jax/data/cityscapes.py; TFDS_DIR: where the prepared files are
written):
  python main.py --config configs/ddfp/cityscapes_1_2.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/cityscapes/1488

Paper (validation mIoU %, DeepLabV3+ / ResNet-101): DDFP mIoU 80.82, supervised baseline
77.83.

Schedule: 200 epochs. With the standard list's 1487 unlabeled images at the paper's
global batch of 16 (4 devices x 4): 92 steps per epoch, 18400 steps in all. On other
device counts the global batch is 4 x devices, the LR follows it linearly
(optim.lr_scaling) and the run stays 200 epochs.

Time: Cityscapes crops (769) have 2.25x the pixels of VOC's, so no time is
extrapolated from the measured VOC speed (configs/ddfp/tables.py).

Shared settings, the pretrained backbone the paper's numbers need, hardware and
paper-vs-release switches: configs/ddfp/tables.py.
"""
from configs.ddfp import tables


def get_config():
  return tables.cityscapes(num_labeled=1488)
