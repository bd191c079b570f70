r"""CSS on Pascal VOC 2012 classic, 366 labeled images: labeled from the 1464
fine images, unlabeled from the 10582-image set.

Command (SPLITS: the standard split lists; EXTRACTED_DIR, TFDS_DIR: as for DDFP's VOC
configs, configs/ddfp/pascal_92.py; the classic lists need the blended set prepared):
  python main.py --config configs/css/pascal_366.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/366
The cross variant: configs/css/pascal_366.py:cross; the release's behaviour: :release
or :cross_release.

Published (validation mIoU %, DeepLabV3+ / ResNet-101, paper Table 1, mean ± std over
three splits): CSS (mix) 74.91 ± 1.12, CSS (cross) 74.47 ± 1.08,
supervised 64.86.

Shared settings, paper-vs-release switches and known differences: configs/css/tables.py.
"""
from configs.css import tables


def get_config(variant: str = "mix"):
  return tables.pascal(num_labeled=366, variant=variant)
