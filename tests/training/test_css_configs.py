"""CSS's configs: the spec's settings (sections 1, 2, 6) written out here, the variants'
switches, docstrings with commands and the published numbers of sibling-results.md,
and the demo's recipe."""
import importlib
import os
import re

import pytest

from configs import demo
from ddfp_jax.config.check import check_config
from paths import SHARED

SIBLINGS = os.path.join(str(SHARED), "reference", "sibling-results.md")
CELLS = {**{f"pascal_{n}": ("pascal", n) for n in (92, 183, 366, 732)},
         **{f"pascal_blended_{n}": ("pascal_blended", n) for n in (662, 1323, 2646, 5291)},
         **{f"cityscapes_{n}": ("cityscapes", n) for n in (186, 372, 744, 1488)}}
COMMON = {
    "method": "css", "model.decoder": "reco", "model.dropout_rate": 0.0,
    "model.mixed_bn": False, "model.projection_dim": 256,
    "model.projection_on": "decoder_input", "model.depth": 101, "model.output_stride": 8,
    "model.aspp_rates": (12, 24, 36), "schedule.sup_only_epochs": 0, "semi.teacher": "ema",
    "semi.ema_decay": 0.99, "semi.teacher_train_mode": True, "optim.name": "sgd",
    "optim.momentum": 0.9, "optim.weight_decay": 5e-4, "optim.decoder_lr_mult": 1.0,
    "css.temperature": 0.5, "css.contrast_temperature": 0.5, "css.num_queries": 256,
    "css.num_negatives": 512, "css.hard_threshold": 0.8, "css.weak_threshold": 0.7,
    "css.unsup_threshold": 0.97, "css.prototype_momentum": 0.99,
    "css.strong.cutmix_prob": 1.0, "css.strong.color_prob": 0.8, "css.strong.hue": 0.25,
    "css.strong.blur_prob": 0.5, "css.strong.flip_prob": 0.5,
}
DATASET = {
    "pascal": {"data.name": "pascal", "data.crop_size": 512, "total_steps": 40_000,
               "optim.learning_rate": 0.0064, "model.deep_stem": False,
               "css.sup_loss": "ce", "css.strong.scale_range": (0.5, 1.5)},
    "pascal_blended": {"data.name": "pascal_blended", "data.crop_size": 512,
                       "total_steps": 40_000, "optim.learning_rate": 0.0064,
                       "model.deep_stem": True, "css.sup_loss": "ce"},
    "cityscapes": {"data.name": "cityscapes", "data.crop_size": 769, "total_steps": 80_000,
                   "optim.learning_rate": 0.0038, "optim.reference_batch": 8,
                   "data.labeled_per_device": 2, "model.deep_stem": True,
                   "css.sup_loss": "ohem", "css.ohem_min_kept": 400_000,
                   "css.strong.scale_range": (0.5, 2.0),
                   "data.eval_protocol": "sliding_window", "data.eval_window": 769},
}
RELEASE = {"css.prototype_source": "student", "css.valid_by": "logit",
           "css.unsup_loss": "reco", "css.indicator_prototypes": "previous",
           "css.scope": "device", "css.quantize_confidence": True, "optim.nesterov": True,
           "css.cross_warmup_epochs": 0}
PAPER = {"css.prototype_source": "teacher", "css.valid_by": "representation",
         "css.unsup_loss": "threshold", "css.indicator_prototypes": "updated",
         "css.scope": "global", "css.quantize_confidence": False, "optim.nesterov": False,
         "css.cross_warmup_epochs": 20}


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return tuple(node) if isinstance(node, (tuple, list)) else node


def _load(name, variant="mix"):
  module = importlib.import_module(f"configs.css.{name}")
  return module, module.get_config(variant)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_spec_settings_and_the_variants(name):
  dataset, labeled = CELLS[name]
  for variant, variant_name, switches in (("mix", "mix", PAPER), ("cross", "cross", PAPER),
                                          ("release", "mix", RELEASE),
                                          ("cross_release", "cross", RELEASE)):
    _, config = _load(name, variant)
    want = {**COMMON, **DATASET[dataset], **switches, "data.num_labeled": labeled,
            "css.variant": variant_name}
    if dataset == "cityscapes" and variant.endswith("release"):
      want.update({"optim.learning_rate": 0.0064, "optim.reference_batch": 16,
                   "data.labeled_per_device": 4, "css.ohem_min_kept": 200_000})
    for key, value in want.items():
      assert _get(config, key) == value, (variant, key)
    check_config(config)
  with pytest.raises(ValueError, match="one of mix, cross, release, cross_release"):
    _load(name, "crosss")


def _published():
  """{(dataset, labeled): {"mix": "68.09", ...}} from sibling-results.md's CSS tables."""
  with open(SIBLINGS) as f:
    text = f.read().split("## DGCL")[0]
  tables = {"pascal": text.split("Table 1")[1].split("Table 2")[0],
            "pascal_blended": text.split("Table 2")[1].split("Table 3")[0],
            "cityscapes": text.split("Table 3")[1].split("Table 4")[0]}
  out = {}
  for dataset, table in tables.items():
    columns = [int(n) for n in re.search(r"\| method \| ([\d |]+)\|", table).group(1)
               .split("|") if n.strip()]
    for variant in ("mix", "cross"):
      row = re.search(rf"\|\s*\**CSS \({variant}\)\**\s*\|(.*)\|", table)
      if row:
        values = [re.match(r"\**([\d.]+)", v.strip()).group(1) for v in row.group(1).split("|")]
        for n, v in zip(columns, values):
          out.setdefault((dataset, n), {})[variant] = v
  return out


@pytest.mark.parametrize("name", sorted(CELLS))
def test_docstring_has_the_command_and_the_published_numbers(name):
  dataset, labeled = CELLS[name]
  module, _ = _load(name)
  doc = " ".join(module.__doc__.split())
  assert f"--config configs/css/{name}.py" in doc and "configs/css/tables.py" in doc
  split = "cityscapes" if dataset == "cityscapes" else "pascal"
  assert f"--config.data.split_dir=SPLITS/{split}/{labeled}" in doc
  if not os.path.exists(SIBLINGS):
    pytest.skip(f"{SIBLINGS} is absent")
  published = _published()[(dataset, labeled)]
  assert re.search(r"CSS \(mix\) (\d+\.\d+)", doc).group(1) == published["mix"]
  if "cross" in published:
    assert re.search(r"CSS \(cross\) (\d+\.\d+)", doc).group(1) == published["cross"]


def test_demo_recipe_is_css_scaled_and_leaves_other_methods_alone():
  config = demo.get_config("css")
  assert config.method == "css" and config.model.projection_dim == 64
  assert config.model.decoder == "reco" and config.schedule.sup_only_epochs == 0
  assert (config.semi.ema_decay, config.css.rampdown_steps_per_epoch) == (0.84, 12)
  assert tuple(config.css.strong.scale_range) == tuple(config.data.scale_range)
  assert config.css.strong.flip_prob == 0.0 and config.css.num_queries == 256
  check_config(config)
  plain = demo.get_config()
  plain.method = "fixmatch"
  assert demo.get_config("fixmatch").to_dict() == plain.to_dict()
