r"""USSS on Cityscapes + CamVid, 100 labeled images per dataset (the paper's pairs).

Command (the variant after a colon: usss, random, cross, joint, cityscapes, camvid,
finetune_cityscapes, finetune_camvid; configs/usss/tables.py):
  python main.py --config configs/usss/cityscapes_camvid_100.py:usss --workdir DIR \
    --config.data.data_dir=TFDS_DIR \
    --config.usss.domain_data.cityscapes.manual_dir=CITYSCAPES_DIR \
    --config.usss.domain_data.camvid.manual_dir=CAMVID_DIR

Published numbers: not available (the paper's tables could not be read); settings,
schedule and known differences from the release: configs/usss/tables.py.
"""
from configs.usss import tables


def get_config(variant: str = "usss"):
  return tables.pair("cityscapes", "camvid", num_labeled=100, variant=variant)
