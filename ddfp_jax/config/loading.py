"""A config from a file and `--config.KEY=VALUE` overrides, outside main.py's flags, and
its fingerprint.

Tools that rebuild the config of a run from its recorded command line (the comparison
harness, the diagnosis tool) parse it exactly as main.py does: ml_collections'
config_flags on a private FlagValues, so the same overrides give the same config.
"""
import hashlib
import json
from typing import Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags


def load(config_file: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of `config_file` (a path, optionally ":ARG") with `overrides` applied."""
  values = flags.FlagValues()
  argv = ["config", f"--config={config_file}", *overrides]
  # config_flags reads the overrides from `sys_argv` (by default this process's command
  # line), so they are given here as well as parsed.
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


# Keys that change only what a run draws for people to look at, never its numbers: left
# out of the fingerprint, so a finished run stays reusable whatever they are (and runs
# from before a key existed keep their fingerprint).
NOT_FINGERPRINTED = ("train.num_images",)
# Keys that choose how the same numbers are computed (as the device does): every value
# enters the fingerprint as the one given here, so runs that differ only in them share a
# fingerprint, and runs from before the other values existed keep theirs.
SAME_NUMBERS = {"model.atrous_impl": "dilated"}
# Keys added after runs were fingerprinted, with the value that gives the behaviour from
# before they existed: left out while they hold it, so earlier runs keep their
# fingerprint (and stay reusable), and any other value still makes another run.
# Method blocks added later count as one key, their default block.
ADDED_WITH_DEFAULT = {"model.multi_grid": (), "model.mixed_bn": True,
                      "model.projection_dim": 0, "model.aux_head": False,
                      "model.decoder": "ddfp", "model.projection_on": "features",
                      "optim.nesterov": False, "data.demo_domain": "day",
                      "data.eval_scale": 1.0}
ADDED_BLOCKS = ("dgcl", "css", "usss")


def _added_with_default():
  from ddfp_jax.methods import METHODS  # pylint: disable=import-outside-toplevel
  blocks = {name: METHODS[name].config_block().to_dict() for name in ADDED_BLOCKS}
  return {**ADDED_WITH_DEFAULT, **blocks}


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """A short hash of every value of `config` (but `NOT_FINGERPRINTED`, and
  `ADDED_WITH_DEFAULT` keys at their default; `SAME_NUMBERS` keys as one value): two runs
  with the same fingerprint (seed included) are the same run."""
  values = config.to_dict()
  for key, canonical in SAME_NUMBERS.items():
    node, leaf = _parent(values, key)
    if leaf in node:
      node[leaf] = canonical
  dropped = {key: None for key in NOT_FINGERPRINTED}
  dropped.update(_added_with_default())
  for key, default in dropped.items():
    node, leaf = _parent(values, key)
    if leaf in node and (key in NOT_FINGERPRINTED or _same(node[leaf], default)):
      del node[leaf]
  text = json.dumps(values, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parent(values: dict, key: str):
  """(the dict that holds dotted `key`'s leaf, the leaf's name); {} if a parent is absent."""
  *parents, leaf = key.split(".")
  node = values
  for parent in parents:
    node = node.get(parent, {})
  return node, leaf


def _same(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(value) == default
  return value == default
