r"""USSS on Cityscapes + SUN RGB-D, 100 labeled images per dataset (the paper's pairs).

Command (the variant after a colon: usss, random, cross, joint, cityscapes, sunrgbd,
finetune_cityscapes, finetune_sunrgbd; configs/usss/tables.py):
  python main.py --config configs/usss/cityscapes_sunrgbd_100.py:usss --workdir DIR \
    --config.data.data_dir=TFDS_DIR \
    --config.usss.domain_data.cityscapes.manual_dir=CITYSCAPES_DIR \
    --config.usss.domain_data.sunrgbd.manual_dir=SUNRGBD_DIR

Published numbers: not available (the paper's tables could not be read); settings,
schedule and known differences from the release: configs/usss/tables.py.
"""
from configs.usss import tables


def get_config(variant: str = "usss"):
  return tables.pair("cityscapes", "sunrgbd", num_labeled=100, variant=variant)
