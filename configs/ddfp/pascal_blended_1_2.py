r"""DDFP on Pascal VOC 2012 blended, 1/2 split: 5291 labeled images from the 10582-image set
with SBD labels, the rest unlabeled (paper, blended VOC table).

Command (SPLITS: the standard CPS/UniMatch split lists; EXTRACTED_DIR: the extracted
download, see ddfp_jax/data/voc.py; TFDS_DIR: where the prepared files are written):
  python main.py --config configs/ddfp/pascal_blended_1_2.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/5291

Paper (validation mIoU %, DeepLabV3+ / ResNet-101): DDFP mIoU 80.90, supervised baseline
77.13.

Schedule: 80 epochs. With the standard list's 5291 unlabeled images at the paper's
global batch of 16 (4 devices x 4): 330 steps per epoch, 26400 steps in all. On other
device counts the global batch is 4 x devices, the LR follows it linearly
(optim.lr_scaling) and the run stays 80 epochs.

Time: at the PyTorch release's measured speed (configs/ddfp/tables.py) this cell's
26400 steps would take about 5.9-6.2 h in PyTorch.

Shared settings, the pretrained backbone the paper's numbers need, hardware and
paper-vs-release switches: configs/ddfp/tables.py.
"""
from configs.ddfp import tables


def get_config():
  return tables.pascal_blended(num_labeled=5291)
