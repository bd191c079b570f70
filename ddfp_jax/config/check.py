"""Checks a user's config against the schema of the defaults before anything runs.

A locked ml_collections config already rejects `--config.some.typo=1` on the command
line; this catches the rest: a config file that misses a key the trainer needs, adds a
key nobody reads (a typo in the file itself), or gives a value of the wrong type. Each
error is one paragraph naming the keys, with the closest valid name where there is one.
"""
import difflib
from typing import Dict, List

import ml_collections

from ddfp_jax.config import defaults
from ddfp_jax.config import presets
from ddfp_jax.methods import METHODS


class ConfigError(ValueError):
  """A config that cannot be run; the message says what to change."""


def _flatten(config, prefix="") -> Dict[str, object]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _did_you_mean(name, choices) -> str:
  close = difflib.get_close_matches(str(name), list(choices), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


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
    problems.append(f"unknown key '{key}'{_did_you_mean(key, schema)}")
  for key in sorted(set(given) & set(schema)):
    want, got = schema[key], given[key]
    if want is None or got is None or isinstance(want, (tuple, list)):
      continue
    if isinstance(want, bool) != isinstance(got, bool) or (
        isinstance(want, (int, float)) and not isinstance(got, (int, float))) or (
        isinstance(want, str) and not isinstance(got, str)):
      problems.append(f"'{key}' should be a {type(want).__name__}, got {got!r}")
  if problems:
    raise ConfigError(
        "The config cannot be used: " + "; ".join(problems) + ". Every valid key and its "
        "meaning is in ddfp_jax/config/defaults.py and, for a method's own block, in "
        "ddfp_jax/methods/<method>.py; override values on the command line with "
        "--config.KEY=VALUE.")
  if config.method not in METHODS:
    hint = _did_you_mean(config.method, METHODS)
    raise ConfigError(f"method '{config.method}' is unknown{hint}: choose one of "
                      f"{', '.join(METHODS)}, with --config.method=NAME or after the config "
                      "file's name, e.g. --config configs/demo.py:fixmatch.")
  method_problems = METHODS[config.method].check_config(config)
  if method_problems:
    raise ConfigError(f"The config cannot be used with method '{config.method}': "
                      + "; ".join(method_problems) + ".")
  if config.preset not in presets.NAMES:
    hint = _did_you_mean(config.preset, presets.NAMES)
    raise ConfigError(f"preset '{config.preset}' is unknown{hint}: use 'custom' (the "
                      "semi.teacher, semi.teacher_train_mode and semi.site switches as "
                      "given), 'paper' or 'release' (see ddfp_jax/config/presets.py).")
  if config.epochs < 0:
    raise ConfigError(f"epochs ({config.epochs}) must be 0 (use total_steps and "
                      "steps_per_epoch as given) or positive (derive them from the data).")
  if config.epochs == 0 and (config.total_steps <= 0 or config.steps_per_epoch <= 0):
    raise ConfigError(f"total_steps ({config.total_steps}) and steps_per_epoch "
                      f"({config.steps_per_epoch}) must be positive, or set epochs > 0 to "
                      "derive both from the number of unlabeled images and the batch.")
