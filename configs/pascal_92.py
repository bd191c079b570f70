r"""DDFP on Pascal VOC 2012 classic, 1/16 split (92): 92 labeled images from the 1464 with
fine labels, unlabeled images from the 10582-image set (paper, classic VOC table).

Command (SPLITS: the standard CPS/UniMatch split lists; EXTRACTED_DIR: the extracted
download, see ddfp_jax/data/voc.py; TFDS_DIR: where the prepared files are written):
  python main.py --config configs/pascal_92.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR --config.data.manual_dir=EXTRACTED_DIR \
    --config.data.split_dir=SPLITS/pascal/92

The standard classic lists draw their unlabeled images from the 10582-image set, so the
blended set must be prepared too and EXTRACTED_DIR needs the SBD SegmentationClassAug
labels as well (python -m ddfp_jax.data.prepare --dataset pascal_blended --manual_dir
EXTRACTED_DIR --data_dir TFDS_DIR).

Paper (validation mIoU %, DeepLabV3+ / ResNet-101): DDFP mIoU 74.95, supervised baseline
45.77.

Schedule: 80 epochs. With the standard list's 10490 unlabeled images at the paper's
global batch of 16 (4 devices x 4): 655 steps per epoch, 52400 steps in all. On other
device counts the global batch is 4 x devices, the LR follows it linearly
(optim.lr_scaling) and the run stays 80 epochs.

Hardware and time: the paper trains on 4 GPUs with 4 labeled + 4 unlabeled images per
GPU. The JAX step time on a GPU is not measured yet (`python -m benchmarks.model` measures
it; README, "Speed", has CPU figures only). The only measured speed is
the PyTorch release's own log (VOC classic 732, crop 513, 4 GPUs, mixed precision):
0.81-0.84 s per step, 49200 steps in about 11.5 h. At that rate this cell's 52400 steps
would take about 11.8-12.2 h in PyTorch.

Backbone: the paper's numbers need an ImageNet-pretrained ResNet-101:
--config.model.pretrained=resnet101.pth (the deep-stem file of U2PL / UniMatch / DDFP, or
its .npz from python -m ddfp_jax.torch_import; README, "PyTorch interop"). Without it the
backbone starts from random init and will not reach the paper's numbers.

Paper or release: the switches keep the paper's method (EMA teacher in inference mode,
perturbation of v); --config.preset=release switches to the released code's teacher and
perturbation site (ddfp_jax/presets.py), for comparison with its numbers.
"""
from configs import tables


def get_config():
  return tables.pascal(num_labeled=92)
