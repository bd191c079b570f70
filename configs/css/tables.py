"""CSS's settings (Wang et al., ICCV 2023, "Space Engage"; spec sections 1, 2 and 6).

Each per-cell config (configs/css/pascal_*.py, pascal_blended_*.py, cityscapes_*.py) is
one call of `pascal`, `pascal_blended` or `cityscapes` with the cell's number of labeled
images and a variant. Shared: DeepLabV3+ at output stride 8 (ASPP 12, 24, 36) with the
ReCo-style decoder (`model.decoder = "reco"`: 1x1 ASPP projection, one-conv classifier,
no dropout), plain BatchNorms, the 256-wide representation head on the decoder input;
the EMA teacher (0.99, the first update copies the student) labels from step 0 in train
mode; SGD (momentum 0.9, weight decay 5e-4, one LR for every parameter, poly 0.9); the
strong view built on the device after the teacher (CutMix always). Iteration counts are
the paper's: 40 000 on VOC, 80 000 on Cityscapes.

An "epoch" of the ramp-down and of the cross variant's warm-up is 200 steps (ReCo's
fixed epoch; `css.rampdown_steps_per_epoch`), so lambda_c decays over the whole VOC run
(200 epochs = 40 000 steps). The release steps it once per pass of its labeled loader,
N_l / (B W) steps: 5 steps on VOC 92 with 2 GPUs x 8, where lambda_c would be 0 after
1000 steps; the unshipped split files may repeat ids, so the authors' value is unknown.
Set `--config.css.rampdown_steps_per_epoch=N` to try another.

Variants (`--config configs/css/CELL.py:VARIANT`): "mix" (default) and "cross", each
with the paper's behaviour where paper and release differ, and "release" /
"cross_release" with the release's (ddfp_jax/methods/css.py lists the switches; here
also Nesterov momentum, 8-bit confidences, per-device statistics, and for cross no
warm-up). The paper's Cityscapes batch is 8 at LR 0.0038, the release's 16 at 0.0064.

Known differences from the release (docs/methods.md): labeled images are not colour-
augmented (the input pipeline augments only the unlabeled stream's colours; the release
colour-jitters labeled images too); the unlabeled stream is rescaled before the teacher
(data.scale_range; the release only crops it) and the strong view is rescaled again on
the device; the release's poly floor of 1e-4 is not applied; the release's Cityscapes
evaluation is one random 769 crop per image, these configs slide a 769 window (the
paper's protocol); prototypes are reduced over devices (the release lets them drift).

Backbone: the published numbers need an ImageNet-pretrained ResNet-101: torchvision's
(7x7 stem) for the classic VOC table, as the release; the deep-stem one for the blended
VOC and Cityscapes tables, as the paper says (--config.model.pretrained=FILE,
docs/interop.md). Hardware and time: not measured (no GPU run yet).
"""
import ml_collections

from configs import base, datasets

VARIANTS = ("mix", "cross", "release", "cross_release")


def recipe(config: ml_collections.ConfigDict, representation_dim: int) -> None:
  """What CSS brings to any setting (these configs and configs/demo.py:css): the ReCo
  decoder and representation head, plain BatchNorms, the EMA teacher in train mode from
  step 0, and no colour work in the input pipeline (the strong view is made on the
  device)."""
  config.method = "css"
  config.model.decoder = "reco"
  config.model.dropout_rate = 0.0
  config.model.mixed_bn = False
  config.model.projection_dim = representation_dim
  config.model.projection_on = "decoder_input"
  config.schedule.sup_only_epochs = 0
  config.semi.teacher = "ema"
  config.semi.ema_decay = 0.99
  config.semi.teacher_train_mode = True
  config.data.color_jitter_prob = 0.0
  config.data.grayscale_prob = 0.0
  config.data.blur_prob = 0.0


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"the CSS configs take one of {', '.join(VARIANTS)} after the file "
                     f"name (e.g. configs/css/pascal_92.py:cross), got {variant!r}.")
  config.css.variant = "cross" if variant.startswith("cross") else "mix"
  if variant.endswith("release"):
    config.css.prototype_source = "student"
    config.css.valid_by = "logit"
    config.css.unsup_loss = "reco"
    config.css.indicator_prototypes = "previous"
    config.css.scope = "device"
    config.css.quantize_confidence = True
    config.css.cross_warmup_epochs = 0
    config.optim.nesterov = True


def _common(num_labeled: int, variant: str, total_steps: int) -> ml_collections.ConfigDict:
  config = base.get_config()
  recipe(config, representation_dim=256)
  config.epochs = 0
  config.total_steps = total_steps
  config.steps_per_epoch = 200
  config.data.num_labeled = num_labeled
  config.data.labeled_per_device = 4
  config.data.unlabeled_per_device = 4
  config.model.depth = 101
  config.model.width = 1.0
  config.model.output_stride = 8
  config.model.aspp_rates = (12, 24, 36)
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.reference_batch = 16
  config.optim.lr_scaling = "linear"
  config.train.log_every = 50
  config.train.eval_every = 2000
  config.train.checkpoint_every = 1000
  apply_variant(config, variant)
  return config


def pascal(num_labeled: int, variant: str = "mix") -> ml_collections.ConfigDict:
  """VOC 2012 classic (labeled from the 1464 fine images): torchvision-stem ResNet-101
  (the release's default), crop 512, 40 000 steps at a global batch of 16 + 16."""
  config = _common(num_labeled, variant, total_steps=40_000)
  datasets.pascal(config)
  config.data.crop_size = 512
  config.data.eval_crop = 512
  config.optim.learning_rate = 0.0064
  config.optim.decoder_lr_mult = 1.0              # the release's one LR for all
  config.model.deep_stem = False
  config.css.strong.scale_range = (0.5, 1.5)
  return config


def pascal_blended(num_labeled: int, variant: str = "mix") -> ml_collections.ConfigDict:
  """VOC 2012 blended (labeled from the 10582-image set, SBD labels): as `pascal` with
  the deep-stem ResNet-101 of the paper's Table 2."""
  config = pascal(num_labeled, variant)
  config.data.name = "pascal_blended"
  config.model.deep_stem = True
  return config


def cityscapes(num_labeled: int, variant: str = "mix") -> ml_collections.ConfigDict:
  """Cityscapes: deep-stem ResNet-101, crop 769, OHEM (0.7, 50 000 pixels per labeled
  image), 80 000 steps; the paper's global batch of 8 at LR 0.0038 (the release: 16 at
  0.0064); the strong view rescales by (0.5, 2.0); sliding 769 windows for validation."""
  config = _common(num_labeled, variant, total_steps=80_000)
  datasets.cityscapes(config, eval_window=769)
  config.optim.decoder_lr_mult = 1.0              # the release's one LR for all
  config.model.deep_stem = True
  config.css.sup_loss = "ohem"
  config.css.ohem_thresh = 0.7
  config.css.strong.scale_range = (0.5, 2.0)
  if variant.endswith("release"):
    config.optim.learning_rate = 0.0064
    config.optim.reference_batch = 16
    config.css.ohem_min_kept = 50_000 * 4        # per device, 4 labeled images each
  else:
    config.data.labeled_per_device = 2
    config.data.unlabeled_per_device = 2
    config.optim.learning_rate = 0.0038
    config.optim.reference_batch = 8
    config.css.ohem_min_kept = 50_000 * 8        # over the global batch of 8
  return config
