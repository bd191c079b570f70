"""DGCL's settings (Wang et al., CVPR 2023, as the authors' release configures them).

Each per-cell config (configs/dgcl/pascal_*.py, configs/dgcl/cityscapes_372.py) is one
call of `pascal` or `cityscapes` with the cell's number of labeled images; the release
ships the VOC classic 732 and Cityscapes 372 settings, and its other splits change only
the lists. Shared: DeepLabV3+ / ResNet-101 (deep stem) with multi-grid (2, 2, 4) in the
last stage, plain BatchNorms (no DDFP auxiliary set), the 256-wide projection head; the
teacher is the student during the first semi-supervised epoch and an EMA (0.999) after,
run in train mode (`semi.teacher = "shared_first_epoch"`, `semi.teacher_train_mode`);
the only strong augmentation is CutMix (p = 0.5; colour jitter, grayscale and blur off);
L = L_sup + 0.5 L_u + 0.5 L_c; 4 labeled + 4 unlabeled images per device (the release's
4 GPUs x (4 + 4) on VOC, 8 x (2 + 2) on Cityscapes: a global batch of 16 + 16 either way,
the batch the base LR belongs to). Steps are derived when the run starts (config.epochs),
so an epoch is one pass over the unlabeled list whatever the number of devices.

Paper or release (`get_config("release")`, i.e. --config configs/dgcl/CELL.py:release):
by default class 0 takes part in the contrastive loss, the loss has its full weight and
every statistic of a step is taken over the global batch (`dgcl.scope = "global"`). The
release's behaviour: class 0 (VOC's background, Cityscapes' road) skipped, the
contrastive gradient divided by its W GPUs (4 on VOC, 8 on Cityscapes: its all-reduce is
not seen by autograd) and the statistics per device (`dgcl.scope = "device"`).

Known differences from the release (docs/methods.md): the random rescale is the long-side
factor of data.scale_range (0.5-2), not U2PL's short-or-long mixture; Cityscapes'
sliding-window evaluation sums softmax scores where the release averages logits; the
release's teacher BatchNorms are not synchronised across GPUs, these are.

Backbone: the published numbers need the ImageNet-pretrained deep-stem ResNet-101
(--config.model.pretrained=resnet101.pth, docs/interop.md). Published numbers: DGCL's
own tables were not available; the VOC classic row as RankMatch (CVPR 2024, Table 1)
quotes it is in each cell's docstring. Hardware and time: not measured (no GPU run yet).
"""
import ml_collections

from configs import base, datasets

# The release's GPU count for each dataset, for the release's contrastive weight.
RELEASE_GPUS = {"pascal": 4, "cityscapes": 8}
VARIANTS = ("paper", "release")


def recipe(config: ml_collections.ConfigDict, projection_dim: int) -> None:
  """What DGCL brings to any setting (these configs and configs/demo.py:dgcl): plain
  BatchNorms, the projection head, the release's teacher rule in train mode, CutMix as
  the only strong augmentation."""
  config.model.mixed_bn = False
  config.model.projection_dim = projection_dim
  config.semi.teacher = "shared_first_epoch"
  config.semi.teacher_train_mode = True
  config.data.color_jitter_prob = 0.0
  config.data.grayscale_prob = 0.0
  config.data.blur_prob = 0.0


def _common(num_labeled: int, variant: str) -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"the DGCL configs take ':paper' or ':release' after the file name, "
                     f"got {variant!r}.")
  config = base.get_config()
  config.method = "dgcl"
  config.total_steps = 0
  config.steps_per_epoch = 0
  config.data.num_labeled = num_labeled
  config.data.labeled_per_device = 4
  config.data.unlabeled_per_device = 4
  recipe(config, projection_dim=256)
  config.model.depth = 101
  config.model.deep_stem = True
  config.model.width = 1.0
  config.model.multi_grid = (2, 2, 4)
  config.semi.ema_decay = 0.999
  config.semi.cutmix_prob = 0.5
  config.semi.lambda_image = 0.5
  config.dgcl.lambda_contrast = 0.5
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.reference_batch = 16
  config.optim.lr_scaling = "linear"
  config.train.log_every = 50
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  return config


def _release(config: ml_collections.ConfigDict, dataset: str) -> None:
  config.dgcl.exclude_class_0 = True
  config.dgcl.contrast_grad_scale = 1.0 / RELEASE_GPUS[dataset]
  config.dgcl.scope = "device"


def pascal(num_labeled: int, variant: str = "paper") -> ml_collections.ConfigDict:
  """VOC 2012 classic (labeled from the 1464 fine images, unlabeled from the 10582-image
  set), the release's pascal/732 config: output stride 16, ASPP (6, 12, 18), crop 513,
  80 epochs with 1 supervised, LR 0.001 (decoder and heads x10), plain CE."""
  config = _common(num_labeled, variant)
  config.epochs = 80
  datasets.pascal(config)
  config.model.output_stride = 16
  config.model.aspp_rates = (6, 12, 18)
  config.schedule.sup_only_epochs = 1
  config.dgcl.sup_loss = "ce"
  if variant == "release":
    _release(config, "pascal")
  return config


def cityscapes(num_labeled: int, variant: str = "paper") -> ml_collections.ConfigDict:
  """Cityscapes (the release's cityscapes/372 config): output stride 8, ASPP (12, 24,
  36), crop 769, 200 epochs with 10 supervised, LR 0.01 (decoder x1), OHEM CE (0.7,
  100 000 pixels) + 0.4 x the auxiliary head's on stage 3; sliding-window evaluation
  (800 x 800 windows, stride 2/3 of the window, as the release's eval script)."""
  config = _common(num_labeled, variant)
  config.epochs = 200
  datasets.cityscapes(config, eval_window=800)   # the release's eval script
  config.model.output_stride = 8
  config.model.aspp_rates = (12, 24, 36)
  config.model.aux_head = True
  config.schedule.sup_only_epochs = 10
  config.dgcl.sup_loss = "ohem"
  config.dgcl.ohem_thresh = 0.7
  config.dgcl.ohem_min_kept = 100_000
  config.dgcl.aux_weight = 0.4
  if variant == "release":
    _release(config, "cityscapes")
  return config
