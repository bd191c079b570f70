"""`config.preset`: one key that sets the three switches where the paper and the release differ.

    preset    semi.teacher  semi.teacher_train_mode  semi.site
    paper     "ema"         False                    "feature"
    release   "shared"      True                     "classifier_input"
    custom    (the three switches as the config gives them)

"paper" is the method as the paper describes it (a true EMA teacher in inference mode, the
perturbation of the pixel features v, eq. 10-12). "release" is what the authors' public
code does (the teacher shares the student's parameters from the first semi-supervised
step on and runs in train mode; the perturbation is applied to the classifier input u and
measured after the classifier block), for like-for-like comparison with the released
numbers. The base config's default is "custom" with the paper's values, so every config
keeps the switches it sets.

A preset other than "custom" wins over the switches: `--config.preset=release
--config.semi.site=feature` runs with site "classifier_input". `apply_preset` logs what it
set and changed, and warns about each switch that the config had moved away from the base
default and that the preset overrides.
"""
from typing import Dict, List, Tuple

from absl import logging
import ml_collections

from ddfp_jax.config import defaults

SWITCHES = ("semi.teacher", "semi.teacher_train_mode", "semi.site")
PRESETS: Dict[str, Dict[str, object]] = {
    "paper": {"semi.teacher": "ema", "semi.teacher_train_mode": False,
              "semi.site": "feature"},
    "release": {"semi.teacher": "shared", "semi.teacher_train_mode": True,
                "semi.site": "classifier_input"},
}
CUSTOM = "custom"
NAMES = (CUSTOM,) + tuple(PRESETS)


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def check_preset(name: str) -> None:
  """Raises ValueError unless `name` is one of `NAMES`."""
  if name not in NAMES:
    raise ValueError(f"preset must be one of {', '.join(map(repr, NAMES))}, got {name!r}")


def preset_changes(config: ml_collections.ConfigDict) -> List[Tuple[str, object, object]]:
  """(key, value in the config, value of the preset) for each switch the preset changes."""
  check_preset(config.preset)
  return [(key, _get(config, key), value)
          for key, value in PRESETS.get(config.preset, {}).items()
          if _get(config, key) != value]


def apply_preset(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with `config.preset`'s switches set (a copy; `config` is not changed).

  "custom" returns `config` itself. Idempotent: applying it again changes nothing.

  Raises:
    ValueError: for an unknown preset name.
  """
  check_preset(config.preset)
  if config.preset == CUSTOM:
    return config
  changes = preset_changes(config)
  resolved = config.copy_and_resolve_references()
  for key, value in PRESETS[config.preset].items():
    _set(resolved, key, value)
  values = ", ".join(f"{k}={v!r}" for k, v in PRESETS[config.preset].items())
  changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes) or "nothing"
  logging.info("preset %r: %s (changed: %s).", config.preset, values, changed)
  base_values = defaults.get_config()
  for key, old, new in changes:
    if old != _get(base_values, key):   # set by the config file or the command line
      logging.warning("preset %r overrides %s=%r with %r (a preset wins over the "
                      "switches; --config.preset=custom keeps them as given).",
                      config.preset, key, old, new)
  return resolved
