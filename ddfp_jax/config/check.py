"""Checks a user's config against the schema of the defaults before anything runs.

A locked ml_collections config already rejects `--config.some.typo=1` on the command
line; this catches the rest before anything starts: a config file that misses a key the
trainer needs, adds a key nobody reads (a typo in the file itself), gives a value of the
wrong type, a choice that is not one of the valid ones (`choices()`: methods, presets,
datasets, protocols, sites, teachers, dtypes, ...), or a number outside its range
(`_RANGES`: probabilities in [0, 1], positive batch sizes, crops at least the output
stride, the class count the dataset has). Each error is one paragraph naming every key at
fault, with the valid values and the closest one where there is one.
"""
import difflib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections

from ddfp_jax.config import defaults
from ddfp_jax.config import presets
from ddfp_jax.data import demo
from ddfp_jax.data import protocols
from ddfp_jax.data import real_datasets
from ddfp_jax.data import sources
from ddfp_jax.methods import METHODS
from ddfp_jax.methods import common
from ddfp_jax.methods import css
from ddfp_jax.methods import dgcl
from ddfp_jax.methods import entropy_module
from ddfp_jax.methods import feature_perturbation
from ddfp_jax.methods import usss
from ddfp_jax.models import builders
from ddfp_jax.models import deeplab
from ddfp_jax.models import drn
from ddfp_jax.models import layers
from ddfp_jax.models import resnet
from ddfp_jax.training import optim
from ddfp_jax.training import step as train_step


# Keys of earlier versions and what replaced them (docs/configs.md has the same table).
_SEMI_KEYS = ("threshold", "lambda_image", "lambda_feature", "site", "cutmix_prob",
              "ema_decay", "teacher", "teacher_train_mode")
RENAMED: Dict[str, str] = {
    "ddfp.semi_supervised": "--config.method=supervised (for False; a semi-supervised "
                            "method otherwise)",
    "ddfp.perturbation": "--config.method=fixmatch / random / cct_noise / channel_dropout "
                         "/ vat / ddfp (for none / random / uniform_noise / channel_dropout "
                         "/ vat / density_descending)",
    **{f"ddfp.{k}": f"semi.{k}" for k in _SEMI_KEYS},
    "train.eval_flow": "ddfp.eval_flow",
    "ddfp.uniform_range": "cct_noise.uniform_range",
    "ddfp.channel_dropout_rate": "channel_dropout.rate",
    "ddfp.vat_xi": "vat.xi",
}


def replacement(key: str) -> Optional[str]:
  """What replaced `key` of an earlier version, or None."""
  if key.startswith("flow."):
    return "ddfp." + key
  return RENAMED.get(key)


class ConfigError(ValueError):
  """A config that cannot be run; the message says what to change."""


# Blocks whose keys are the user's (USSS's domains and their data settings): one value
# for the schema; the method's check reads them.
_FREE_FORM = ("usss.domain_data",)


def _flatten(config, prefix="") -> Dict[str, object]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and name not in _FREE_FORM:
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _did_you_mean(name, choices) -> str:
  close = difflib.get_close_matches(str(name), list(choices), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def choices() -> Dict[str, Tuple]:
  """Every choice-valued key and its valid values, as the modules that use them define."""
  return {
      "method": tuple(METHODS),
      "preset": presets.NAMES,
      "data.name": sources.DATASETS,
      "data.eval_protocol": protocols.PROTOCOLS,
      "data.demo_domain": tuple(demo.DOMAINS),
      "data.eval_window_grid": protocols.GRID_RULES,
      "model.depth": tuple(sorted(resnet.RESNET_LAYOUTS)),
      "model.output_stride": tuple(sorted(resnet.DILATE_STAGES)),
      "model.atrous_impl": (*layers.ATROUS_IMPLS, "auto"),
      "model.dtype": tuple(builders.DTYPES),
      "model.decoder": deeplab.DECODERS,
      "model.projection_on": deeplab.PROJECTION_INPUTS,
      "semi.site": feature_perturbation.SITES,
      "semi.teacher": train_step.TEACHERS,
      "optim.lr_scaling": optim.LR_SCALING_RULES,
      "optim.name": optim.OPTIMIZERS,
      "dgcl.scope": dgcl.SCOPES,
      "dgcl.sup_loss": dgcl.SUP_LOSSES,
      "css.variant": css.VARIANTS,
      "css.scope": css.SCOPES,
      "css.sup_loss": common.SUP_LOSSES,
      "css.prototype_source": css.PROTOTYPE_SOURCES,
      "css.valid_by": css.VALID_BY,
      "css.unsup_loss": css.UNSUP_LOSSES,
      "css.indicator_prototypes": css.INDICATOR_PROTOTYPES,
      "usss.encoder": usss.ENCODERS,
      "usss.drn_depth": tuple(sorted(drn.DRN_LAYOUTS)),
      "usss.label_embeddings": usss.EMBEDDING_SOURCES,
      "usss.reduce": entropy_module.REDUCTIONS,
      "usss.upsample": usss.UPSAMPLES,
  }


# (keys, test, the requirement as the message states it). A key the config lacks (a
# method block that is not there) is skipped; so is a test whose other keys are missing.
_Rule = Tuple[Sequence[str], Callable[..., bool], str]
_in_unit = lambda x: 0.0 <= x <= 1.0
_RANGES: List[_Rule] = [
    (("semi.threshold", "semi.cutmix_prob", "semi.ema_decay", "data.flip_prob",
      "data.color_jitter_prob", "data.grayscale_prob", "data.blur_prob",
      "ddfp.flow.final_lr_ratio", "dgcl.contrast_grad_scale", "dgcl.ohem_thresh",
      "css.hard_threshold", "css.weak_threshold", "css.unsup_threshold",
      "css.prototype_momentum", "css.ohem_thresh", "css.strong.cutmix_prob",
      "css.strong.color_prob", "css.strong.blur_prob", "css.strong.flip_prob"),
     _in_unit, "in [0, 1]"),
    (("model.dropout_rate", "channel_dropout.rate", "optim.momentum"),
     lambda x: 0.0 <= x < 1.0, "in [0, 1)"),
    (("data.eval_stride_ratio",), lambda x: 0.0 < x <= 1.0, "in (0, 1]"),
    (("data.hue", "css.strong.hue"), lambda x: 0.0 <= x <= 0.5, "in [0, 0.5]"),
    (("data.labeled_per_device", "data.unlabeled_per_device", "data.eval_per_device",
      "data.crop_size", "data.eval_crop", "data.eval_window", "data.demo_labeled",
      "data.demo_unlabeled", "data.demo_validation", "data.demo_image_size",
      "optim.learning_rate", "optim.reference_batch", "optim.decoder_lr_mult",
      "model.width", "train.log_every", "train.eval_every", "train.checkpoint_every",
      "train.keep_checkpoints", "ddfp.flow.num_blocks", "ddfp.flow.hidden",
      "ddfp.flow.num_samples", "ddfp.flow.learning_rate", "ddfp.flow.clamp",
      "dgcl.temperature", "dgcl.num_anchors", "dgcl.num_positives", "dgcl.num_negatives",
      "dgcl.max_pixels", "dgcl.memory_size", "dgcl.memory_per_class",
      "dgcl.classes_per_pass", "dgcl.ohem_min_kept", "css.temperature",
      "css.contrast_temperature", "css.num_queries", "css.num_negatives",
      "css.rampdown_epochs", "css.ohem_min_kept", "usss.embedding_dim",
      "usss.temperature", "usss.per_class", "data.eval_scale"),
     lambda x: x > 0, "positive"),
    (("semi.lambda_image", "semi.lambda_feature", "ddfp.eps", "random.eps", "vat.eps",
      "vat.xi", "cct_noise.uniform_range", "ddfp.flow.noise_std", "ddfp.flow.grad_clip",
      "optim.weight_decay", "optim.poly_power", "data.brightness", "data.contrast",
      "data.saturation", "data.prefetch", "data.eval_window_batch", "data.num_labeled",
      "train.steps_this_run", "train.num_images", "model.projection_dim",
      "schedule.sup_only_epochs", "dgcl.lambda_contrast", "dgcl.aux_weight",
      "schedule.flow_start_epoch", "css.lambda_contrast", "css.rampdown_scale",
      "css.rampdown_steps_per_epoch", "css.cross_warmup_epochs", "css.strong.brightness",
      "css.strong.contrast", "css.strong.saturation", "usss.alpha", "usss.beta",
      "usss.collect_epochs"),
     lambda x: x >= 0, "0 or more"),
    (("data.num_classes",), lambda x: x >= 2, "at least 2"),
    (("data.scale_range",), lambda r: len(r) == 2 and 0 < r[0] <= r[1],
     "two numbers 0 < low <= high"),
    (("data.blur_sigma",), lambda r: len(r) == 2 and 0 <= r[0] <= r[1],
     "two numbers 0 <= low <= high"),
    (("data.mean",), lambda m: len(m) == 3, "three numbers (R, G, B)"),
    (("data.std",), lambda s: len(s) == 3 and all(x > 0 for x in s),
     "three positive numbers (R, G, B)"),
    (("model.aspp_rates",), lambda r: len(r) > 0 and all(int(x) > 0 for x in r),
     "positive dilation rates"),
    (("model.multi_grid",), lambda r: all(int(x) > 0 for x in r),
     "positive dilation factors, or () for none"),
]
# Requirements between keys: (the key reported, the keys the test reads, test, requirement).
_RELATIONS: List[Tuple[str, Sequence[str], Callable[..., bool], str]] = [
    ("data.crop_size", ("data.crop_size", "model.output_stride"), lambda c, s: c >= s,
     "at least model.output_stride ({1}), so that the features have a pixel"),
    ("data.eval_crop", ("data.eval_crop", "model.output_stride", "data.eval_protocol"),
     lambda c, s, p: p != "center_crop" or c >= s, "at least model.output_stride ({1})"),
    ("data.eval_window", ("data.eval_window", "model.output_stride", "data.eval_protocol"),
     lambda w, s, p: p != "sliding_window" or w >= s, "at least model.output_stride ({1})"),
    ("model.multi_grid", ("model.multi_grid", "model.depth"),
     lambda g, d: not g or d not in resnet.RESNET_LAYOUTS
     or len(g) == resnet.RESNET_LAYOUTS[d][1][3],
     "one factor per block of the last stage of ResNet-{1}, or () for none"),
    ("data.ignore_label", ("data.ignore_label", "data.num_classes"),
     lambda i, n: n <= i <= 255, "a label value that is no class id: from data.num_classes "
     "({1}) to 255 (labels are 8-bit)"),
]


# What to do about a bad choice, where the valid values alone do not say it.
_CHOICE_HINTS = {
    "method": " (pass it with --config.method=NAME or after the config file's name, e.g. "
              "--config configs/demo.py:fixmatch)",
    "preset": " ('custom' keeps the semi.teacher, semi.teacher_train_mode and semi.site "
              "switches as given; see ddfp_jax/config/presets.py)",
}


def _dataset_classes(name: str, demo_domain: str = "day") -> int:
  if name == "demo":
    return demo.DOMAINS[demo_domain].num_classes if demo_domain in demo.DOMAINS else None
  return real_datasets.DATASETS[name].num_classes


def _value_problems(given: Dict[str, object]) -> List[str]:
  """Choices, ranges and relations between keys (values whose types already passed)."""
  problems = []
  for key, valid in choices().items():
    if key in given and given[key] not in valid:
      shown = ", ".join(repr(v) for v in valid)
      problems.append(f"'{key}' is {given[key]!r}, not one of {shown}"
                      f"{_did_you_mean(given[key], [str(v) for v in valid])}"
                      f"{_CHOICE_HINTS.get(key, '')}")
  for keys, test, requirement in _RANGES:
    for key in keys:
      if key in given and given[key] is not None and not test(given[key]):
        problems.append(f"'{key}' must be {requirement}, got {given[key]!r}")
  for key, reads, test, requirement in _RELATIONS:
    if all(k in given for k in reads) and not test(*(given[k] for k in reads)):
      values = [given[k] for k in reads]
      problems.append(f"'{key}' must be {requirement.format(*values)}, got {values[0]!r}")
  name = given.get("data.name")
  classes = (_dataset_classes(name, given.get("data.demo_domain", "day"))
             if name in sources.DATASETS else None)
  if classes is not None and given.get("data.num_classes") != classes:
    what = (f"the demo's '{given.get('data.demo_domain', 'day')}' domain" if name == "demo"
            else f"dataset '{name}'")
    problems.append(f"'data.num_classes' is {given.get('data.num_classes')!r} but {what} "
                    f"has {classes} classes")
  return problems


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if `config` does not match the schema of the defaults."""
  schema = _flatten(defaults.get_config())
  given = _flatten(config)
  problems: List[str] = []
  missing = sorted(set(schema) - set(given))
  if missing:
    problems.append(f"missing key(s) {', '.join(missing)} (a config must start from "
                    "`configs.base.get_config()` and override fields, not build its own "
                    "ConfigDict)")
  for key in sorted(set(given) - set(schema)):
    now = replacement(key)
    problems.append(f"unknown key '{key}'" + (f" (replaced by {now})" if now else
                                              _did_you_mean(key, schema)))
  for key in sorted(set(given) & set(schema)):
    want, got = schema[key], given[key]
    if want is None or got is None or isinstance(want, (tuple, list)):
      continue
    if isinstance(want, bool) != isinstance(got, bool) or (
        isinstance(want, (int, float)) and not isinstance(got, (int, float))) or (
        isinstance(want, str) and not isinstance(got, str)):
      problems.append(f"'{key}' should be a {type(want).__name__}, got {got!r}")
  if not problems:
    problems = _value_problems(given)
  if problems:
    raise ConfigError(
        "The config cannot be used: " + "; ".join(problems) + ". Every valid key and its "
        "meaning is in ddfp_jax/config/defaults.py and, for a method's own block, in "
        "ddfp_jax/methods/<method>.py; override values on the command line with "
        "--config.KEY=VALUE.")
  method_problems = METHODS[config.method].check_config(config)
  if config.method == "usss" and not method_problems:
    # Each domain's data settings, with the same checks as the run's.
    for name, domain in usss.domain_configs(config).items():
      method_problems += [f"in domain '{name}' (usss.domain_data.{name}), {p}"
                          for p in _value_problems(_flatten(domain))]
  if method_problems:
    raise ConfigError(f"The config cannot be used with method '{config.method}': "
                      + "; ".join(method_problems) + ".")
  if config.epochs < 0:
    raise ConfigError(f"epochs ({config.epochs}) must be 0 (use total_steps and "
                      "steps_per_epoch as given) or positive (derive them from the data).")
  if config.epochs == 0 and (config.total_steps <= 0 or config.steps_per_epoch <= 0):
    raise ConfigError(f"total_steps ({config.total_steps}) and steps_per_epoch "
                      f"({config.steps_per_epoch}) must be positive, or set epochs > 0 to "
                      "derive both from the number of unlabeled images and the batch.")
