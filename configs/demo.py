r"""The embedded digit-scenes demo: every method on one CPU-sized setting, CPU included.

Command (DDFP; any method after a colon, e.g. configs/demo.py:fixmatch):
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo

Scenes of upscaled handwritten digits (scikit-learn's bundled set) on textured
backgrounds, 11 classes (background + 10 digits): LABELED labeled and UNLABELED unlabeled
training scenes (1040 in all), 200 validation scenes from digit samples never trained on.
A width-1/4 ResNet-18 DeepLabV3+ at output stride 8, trained from scratch with AdamW
(learning rate 3e-3, poly decay) on 64 x 64 crops for 2500 steps (20 epochs of 125
steps): 1 warm-up epoch, the flow from epoch 1, every feature perturbation from epoch 2.

The setting was chosen from supervised runs only (results/demo_calibration.md and
results/demo_probe_speed.md, docs/demo.md "Choosing the setting"): no horizontal flips
(a mirrored digit is another shape), a mild rescale (0.9-1.1), output stride 8, AdamW
(at 2500 steps momentum SGD's fully supervised runs ended at 18-26 %, AdamW's at 61-67 %),
and the number of labeled scenes that leaves supervised-only at least 15
points below the fully supervised upper bound. The semi-supervised hyper-parameters are
the paper's (tau 0.95, lambda 0.5 / 0.5, the paper's teacher and perturbation site)
except where the setting forces a change, each scaled by a rule stated before any
semi-supervised run (docs/demo.md):
  - eps 4 -> 2 (ddfp, random): per-pixel norms grow with sqrt(channels); the features
    here have 64 channels, the paper's 256.
  - vat.eps 4 -> 0.25: VAT's norm is per image, over channels and pixels: sqrt(64 * 16^2 /
    (256 * 129^2)) of the paper's (crop 64 at stride 4 vs VOC's 513).
  - semi.ema_decay 0.999 -> 0.98: the teacher's horizon 1 / (1 - d) stays 2-2.5 % of the
    schedule (1000 of the 49200 steps of VOC 732 in the release's log; 50 of 2500 here).
  - the flow's MLP is 64 wide (the features' width), and it trains on every pixel of a
    step's batch (4096 at this crop; the paper samples 20480 of far more).

DGCL (configs/demo.py:dgcl) takes its recipe from its release (configs/dgcl/tables.py):
plain BatchNorms, a projection head as wide as the features (64; the release's 256 =
its feature width), the teacher shared during the first semi-supervised epoch and an EMA
after, in train mode, CutMix as the only strong augmentation. Scaled: the class memory
holds 1000 entries per class and takes up to 100 per class and step (the release's 10 000
and 1000: ten steps of inserts either way; a step here has 4096 pixels, the release's
133 000 per GPU), and the density is scored for up to 1000 of a class's pixels (the
release's 10 000 of 133 000; it is the step's heaviest part); multi-grid stays off (ResNet-18's last stage has 2 blocks, the grid 3).

CSS (configs/demo.py:css, mix; the cross variant with --config.css.variant=cross) takes
its recipe from configs/css/tables.py: the ReCo decoder, plain BatchNorms, a 64-wide
representation head (as the features), the EMA teacher in train mode from step 0 (no
warm-up epoch), its strong view made on the device; its thresholds, temperatures, 256
anchors and 512 negatives are the paper's. Scaled by the rules above: the teacher's EMA
0.99 -> 0.84 (its horizon, 100 of 40 000 steps on VOC, stays 0.25 % of the schedule);
the ramp-down's 200 epochs span the run as on VOC (12 steps each; the cross warm-up's
20 epochs are then 240 steps); the strong view's rescale is the setting's (0.9-1.1) and
never flips, as every view of the demo.
"""
from configs import base
from configs.css import tables as css_tables
from configs.dgcl import tables

LABELED = 150
UNLABELED = 1040 - LABELED


def get_config(method: str = "ddfp"):
  """`method`: the part after the colon of --config configs/demo.py:METHOD."""
  config = base.get_config()
  config.method = method
  config.total_steps = 2500
  config.steps_per_epoch = 125        # ~ one pass over the unlabeled scenes at batch 8
  config.data.name = "demo"
  config.data.num_classes = 11
  config.data.demo_labeled = LABELED
  config.data.demo_unlabeled = UNLABELED
  config.data.crop_size = 64
  config.data.scale_range = (0.9, 1.1)
  config.data.flip_prob = 0.0
  config.data.labeled_per_device = 8
  config.data.unlabeled_per_device = 8
  config.data.eval_per_device = 25
  config.model.depth = 18
  config.model.deep_stem = True
  config.model.width = 0.25
  config.model.output_stride = 8
  config.model.aspp_rates = (2, 4, 6)
  config.optim.name = "adamw"
  config.optim.learning_rate = 0.003
  config.optim.reference_batch = 8
  config.optim.decoder_lr_mult = 1.0
  config.schedule.sup_only_epochs = 1
  config.schedule.flow_start_epoch = 1
  # Semi-supervised: the paper's values (the base config's), scaled as the docstring says.
  config.semi.ema_decay = 0.98
  config.ddfp.eps = 2.0
  config.random.eps = 2.0
  config.vat.eps = 0.25
  config.ddfp.flow.hidden = 64
  config.ddfp.flow.num_samples = 4096
  config.train.log_every = 125
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  if method == "dgcl":
    dgcl_recipe(config)
  if method == "css":
    css_recipe(config)
  if method == "usss":
    usss_recipe(config)
  config.train.final_note = (
      "The methods compared on this setting: results/demo_table4.md (README, 'Demo results'); "
      "rerun with python -m ddfp_jax.tools.compare (docs/compare.md).")
  return config


def dgcl_recipe(config):
  """DGCL's settings on the demo (docstring): its recipe, the memory scaled."""
  tables.recipe(config, projection_dim=64)   # as wide as the demo's features
  config.dgcl.memory_size = 1000
  config.dgcl.memory_per_class = 100
  config.dgcl.max_pixels = 1000


def usss_recipe(config):
  """USSS on the demo's two domains (configs/usss/demo.py has the comparison's runs)."""
  from configs.usss import demo as usss_demo  # pylint: disable=import-outside-toplevel
  usss_demo.recipe(config)


def css_recipe(config):
  """CSS's settings on the demo (docstring): its recipe, its schedules scaled."""
  css_tables.recipe(config, representation_dim=64)   # as wide as the demo's features
  config.semi.ema_decay = 0.84
  config.css.rampdown_steps_per_epoch = 12
  config.css.strong.scale_range = tuple(config.data.scale_range)
  config.css.strong.flip_prob = 0.0
