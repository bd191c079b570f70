r"""USSS on Cityscapes + IDD (level 3), 300 labeled images per dataset (the paper's pairs).

Command (the variant after a colon: usss, random, cross, joint, cityscapes, idd,
finetune_cityscapes, finetune_idd; configs/usss/tables.py):
  python main.py --config configs/usss/cityscapes_idd_300.py:usss --workdir DIR \
    --config.data.data_dir=TFDS_DIR \
    --config.usss.domain_data.cityscapes.manual_dir=CITYSCAPES_DIR \
    --config.usss.domain_data.idd.manual_dir=IDD_DIR

Published numbers: not available (the paper's tables could not be read); settings,
schedule and known differences from the release: configs/usss/tables.py.
"""
from configs.usss import tables


def get_config(variant: str = "usss"):
  return tables.pair("cityscapes", "idd", num_labeled=300, variant=variant)
