"""Dataset-level settings of the paper's tables (DDFP, CVPR 2024, section 4.1).

Each per-cell config (configs/ddfp/cityscapes_*.py, configs/ddfp/pascal_*.py,
configs/ddfp/pascal_blended_*.py) is one call of `cityscapes`, `pascal` or `pascal_blended`
with the cell's number of labeled images. Everything else is shared: DeepLabV3+ /
ResNet-101 (deep stem, output stride 16), 4 labeled + 4 unlabeled images per device (the
paper's 4 GPUs make a global batch of 16 + 16, the batch the base LR belongs to), and the
base's switches between the paper's and the release's behaviour left at their defaults
(preset "custom" with the paper's values; --config.preset=release for the release's).

Steps are derived when the run starts (config.epochs > 0, total_steps = steps_per_epoch
= 0): steps_per_epoch = unlabeled images // global unlabeled batch, so an epoch stays one
pass over the unlabeled list whatever the number of devices.

Hardware and time: the paper trains on 4 GPUs with 4 labeled + 4 unlabeled images per
GPU. The JAX step time on a GPU is not measured yet (`python -m benchmarks.model` measures
it; docs/speed.md has CPU figures only). The only measured speed is the PyTorch release's
own log (VOC classic 732, crop 513, 4 GPUs, mixed precision): 0.81-0.84 s per step, 49200
steps in about 11.5 h; each VOC cell's docstring gives its steps at that rate.

Backbone: the paper's numbers need an ImageNet-pretrained ResNet-101:
--config.model.pretrained=resnet101.pth (the deep-stem file of U2PL / UniMatch / DDFP, or
its .npz from python -m ddfp_jax.interop.cli; docs/interop.md). Without it the backbone
starts from random init and will not reach the paper's numbers.

Paper or release: the switches keep the paper's method (EMA teacher in inference mode,
perturbation of v); --config.preset=release switches to the released code's teacher and
perturbation site (ddfp_jax/config/presets.py), for comparison with its numbers.
"""
import ml_collections

from configs import base, datasets


def _common(num_labeled: int) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.total_steps = 0
  config.steps_per_epoch = 0
  config.data.num_labeled = num_labeled
  config.data.labeled_per_device = 4
  config.data.unlabeled_per_device = 4
  config.model.depth = 101
  config.model.deep_stem = True
  config.model.width = 1.0
  config.model.output_stride = 16
  config.model.aspp_rates = (6, 12, 18)
  # The flow's Gaussian mixture has one component per class: data.num_classes.
  config.ddfp.eps = 4.0
  config.semi.lambda_image = 0.5
  config.semi.lambda_feature = 0.5
  config.semi.ema_decay = 0.999
  config.optim.reference_batch = 16     # 4 GPUs x 4 labeled images
  config.optim.lr_scaling = "linear"
  config.schedule.sup_only_epochs = 1
  config.schedule.flow_start_epoch = 1
  # Runs of 18k-52k steps: log often, evaluate and checkpoint every few epochs' worth.
  config.train.log_every = 50
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  return config


def cityscapes(num_labeled: int) -> ml_collections.ConfigDict:
  """Cityscapes, labeled from the 2975 fine training images; 19 classes."""
  config = _common(num_labeled)
  config.epochs = 200
  # The paper's crop as the window; the release evaluates with 801.
  datasets.cityscapes(config, eval_window=769)
  config.semi.threshold = 0.7
  return config


def pascal(num_labeled: int) -> ml_collections.ConfigDict:
  """Pascal VOC 2012 classic: labeled from the 1464 fine images, unlabeled from the
  10582-image set; 21 classes."""
  config = _common(num_labeled)
  config.epochs = 80
  datasets.pascal(config)
  config.semi.threshold = 0.95
  return config


def pascal_blended(num_labeled: int) -> ml_collections.ConfigDict:
  """Pascal VOC 2012 blended: labeled from the 10582-image set with SBD labels."""
  config = pascal(num_labeled)
  config.data.name = "pascal_blended"
  return config
