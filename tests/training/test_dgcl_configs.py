"""DGCL's configs: the release's settings (spec sections 1, 2, 6, 8 written out here),
the release variant's quirks, docstrings with commands and published numbers, step
counts from the split lists, and the demo's recipe."""
import importlib
import os
import re

import pytest

from configs import base, demo
from ddfp_jax.config.check import check_config
from paths import SHARED

SPLITS = os.path.join(str(SHARED), "splits")
SIBLINGS = os.path.join(str(SHARED), "reference", "sibling-results.md")
CELLS = {"pascal_92": ("pascal", 92), "pascal_183": ("pascal", 183),
         "pascal_366": ("pascal", 366), "pascal_732": ("pascal", 732),
         "pascal_1464": ("pascal", 1464), "cityscapes_372": ("cityscapes", 372)}

COMMON = {
    "method": "dgcl", "total_steps": 0, "steps_per_epoch": 0,
    "data.labeled_per_device": 4, "data.unlabeled_per_device": 4,
    "data.color_jitter_prob": 0.0, "data.grayscale_prob": 0.0, "data.blur_prob": 0.0,
    "model.depth": 101, "model.deep_stem": True, "model.multi_grid": (2, 2, 4),
    "model.mixed_bn": False, "model.projection_dim": 256,
    "semi.teacher": "shared_first_epoch", "semi.teacher_train_mode": True,
    "semi.ema_decay": 0.999, "semi.cutmix_prob": 0.5, "semi.lambda_image": 0.5,
    "dgcl.lambda_contrast": 0.5, "dgcl.temperature": 0.5, "dgcl.ks": (8, 16, 32),
    "dgcl.num_anchors": 200, "dgcl.num_positives": 50, "dgcl.num_negatives": 512,
    "dgcl.max_pixels": 10_000, "dgcl.memory_size": 10_000, "dgcl.memory_per_class": 1000,
    "optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
    "optim.reference_batch": 16,
}
DATASET = {
    "pascal": {"data.name": "pascal", "data.num_classes": 21, "data.crop_size": 513,
               "epochs": 80, "schedule.sup_only_epochs": 1, "model.output_stride": 16,
               "model.aspp_rates": (6, 12, 18), "optim.learning_rate": 0.001,
               "optim.decoder_lr_mult": 10.0, "dgcl.sup_loss": "ce",
               "model.aux_head": False, "data.eval_protocol": "center_crop",
               "data.eval_crop": 513},
    "cityscapes": {"data.name": "cityscapes", "data.num_classes": 19,
                   "data.crop_size": 769, "epochs": 200, "schedule.sup_only_epochs": 10,
                   "model.output_stride": 8, "model.aspp_rates": (12, 24, 36),
                   "optim.learning_rate": 0.01, "optim.decoder_lr_mult": 1.0,
                   "dgcl.sup_loss": "ohem", "dgcl.ohem_thresh": 0.7,
                   "dgcl.ohem_min_kept": 100_000, "model.aux_head": True,
                   "dgcl.aux_weight": 0.4, "data.eval_protocol": "sliding_window",
                   "data.eval_window": 800},
}
RELEASE_GPUS = {"pascal": 4, "cityscapes": 8}


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _load(name, variant="paper"):
  module = importlib.import_module(f"configs.dgcl.{name}")
  return module, module.get_config(variant)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_release_settings_and_the_release_variant(name):
  dataset, labeled = CELLS[name]
  _, config = _load(name)
  for key, value in {**COMMON, **DATASET[dataset], "data.num_labeled": labeled}.items():
    got = _get(config, key)
    assert (tuple(got) if isinstance(value, tuple) else got) == value, key
  # The paper's meaning by default, the release's quirks in the variant.
  assert (config.dgcl.exclude_class_0, config.dgcl.contrast_grad_scale,
          config.dgcl.scope) == (False, 1.0, "global")
  _, release = _load(name, "release")
  assert release.dgcl.exclude_class_0 is True and release.dgcl.scope == "device"
  assert release.dgcl.contrast_grad_scale == pytest.approx(1 / RELEASE_GPUS[dataset])
  for c in (config, release):
    filled = c.copy_and_resolve_references()
    filled.total_steps, filled.steps_per_epoch = 1000, 100
    check_config(filled)
  with pytest.raises(ValueError, match="':paper' or ':release'"):
    _load(name, "relase")


@pytest.mark.parametrize("name", sorted(CELLS))
def test_docstring_has_the_command_the_published_number_and_the_step_counts(name):
  dataset, labeled = CELLS[name]
  module, config = _load(name)
  doc = " ".join(module.__doc__.split())
  assert f"--config configs/dgcl/{name}.py" in doc and "configs/dgcl/tables.py" in doc
  assert f"--config.data.split_dir=SPLITS/{dataset}/{labeled}" in doc
  if dataset == "pascal" and os.path.exists(SIBLINGS):
    with open(SIBLINGS) as f:
      text = f.read()
    columns = [int(n) for n in re.search(r"\| method \| ([\d |]+)\|", text.split(
        "## DGCL")[1]).group(1).split("|") if n.strip()]
    row = re.search(r"\| DGCL \(as quoted\) \| ([\d. |]+)\|", text).group(1).split("|")
    published = dict(zip(columns, (v.strip() for v in row)))
    assert re.findall(r"DGCL mIoU (\d+\.\d)", doc) == [published[labeled]]
  unlabeled_list = os.path.join(SPLITS, dataset, str(labeled), "unlabeled.txt")
  if not os.path.exists(unlabeled_list):
    pytest.skip(f"{unlabeled_list} is absent")
  with open(unlabeled_list) as f:
    unlabeled = sum(1 for line in f if line.strip())
  per_epoch, total = re.search(r"(\d+) steps per epoch, (\d+) steps in all", doc).groups()
  assert int(per_epoch) == unlabeled // 16
  assert int(total) == unlabeled // 16 * config.epochs


def test_demo_recipe_is_dgcls_and_leaves_other_methods_alone():
  config = demo.get_config("dgcl")
  assert config.method == "dgcl" and config.model.projection_dim == 64
  assert (config.semi.teacher, config.semi.teacher_train_mode) == ("shared_first_epoch", True)
  assert config.data.color_jitter_prob == config.data.blur_prob == 0.0
  assert config.model.mixed_bn is False
  assert (config.dgcl.memory_size, config.dgcl.memory_per_class) == (1000, 100)
  check_config(config)
  # Every other method's demo config is the plain one with its name.
  for method in ("ddfp", "fixmatch", "supervised"):
    plain = demo.get_config()
    plain.method = method
    assert demo.get_config(method).to_dict() == plain.to_dict()
  assert base.get_config().dgcl.exclude_class_0 is False
