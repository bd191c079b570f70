r"""DDFP on Pascal VOC 2012 classic, 1/8 split (183): 183 labeled images from the 1464 with
fine labels, unlabeled images from the 10582-image set (paper, classic VOC table).

Command (SPLITS: the standard CPS/UniMatch split lists; EXTRACTED_DIR: the extracted
download, see ddfp_jax/data/voc.py; TFDS_DIR: where the prepared files are written):
  python main.py --config configs/ddfp/pascal_183.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/183

The standard classic lists draw their unlabeled images from the 10582-image set, so the
blended set must be prepared too and EXTRACTED_DIR needs the SBD SegmentationClassAug
labels as well (python -m ddfp_jax.data.prepare --dataset pascal_blended --manual_dir
EXTRACTED_DIR --data_dir TFDS_DIR).

Paper (validation mIoU %, DeepLabV3+ / ResNet-101): DDFP mIoU 78.01, supervised baseline
54.92.

Schedule: 80 epochs. With the standard list's 10399 unlabeled images at the paper's
global batch of 16 (4 devices x 4): 649 steps per epoch, 51920 steps in all. On other
device counts the global batch is 4 x devices, the LR follows it linearly
(optim.lr_scaling) and the run stays 80 epochs.

Time: at the PyTorch release's measured speed (configs/ddfp/tables.py) this cell's
51920 steps would take about 11.7-12.1 h in PyTorch.

Shared settings, the pretrained backbone the paper's numbers need, hardware and
paper-vs-release switches: configs/ddfp/tables.py.
"""
from configs.ddfp import tables


def get_config():
  return tables.pascal(num_labeled=183)
