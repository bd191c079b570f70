"""Several datasets ("domains") in one run, each with its own label space (USSS's setting).

The input pipeline stays single-domain: a domain is the run's config with the data keys in
which that domain differs replaced (`domain_config`), and the run's training batch is the
domains' batches side by side, each key prefixed with its domain's name
(`MergedBatches`: "day/labeled_image", "night/labeled_image", ...), so that one train
step sees one labeled and one unlabeled batch of every domain.

    configs = {d: domain_config(config, overrides[d]) for d in names}
    batches = MergedBatches({d: pipeline.train_batches(c, ...) for d, c in configs.items()})

The run's data functions (`prepare`, `num_unlabeled`, `train_batches`) take the run's
config and do that for a run over several domains (USSS's `usss.domains`), or call the
pipeline as it is for a run over one dataset: the trainer has one path.
"""
from typing import Dict, Iterator, Mapping, Tuple

import ml_collections
import numpy as np

from ddfp_jax.data import pipeline
from ddfp_jax.data.errors import DatasetError

SEPARATOR = "/"


def domain_config(config: ml_collections.ConfigDict,
                  overrides: Mapping[str, object]) -> ml_collections.ConfigDict:
  """A copy of `config` whose `data` has `overrides` (data key -> value) applied; a None
  value (a path left unset, e.g. a domain's manual_dir) keeps the run's value.

  Raises:
    DatasetError: an override names a key `config.data` does not have.
  """
  unknown = sorted(set(overrides) - set(config.data.keys()))
  if unknown:
    raise DatasetError(
        f"A domain's data settings name {', '.join(map(repr, unknown))}, which "
        "config.data does not have: a domain can only change keys of config.data (see "
        "ddfp_jax/config/defaults.py for them).")
  copy = config.copy_and_resolve_references()
  with copy.unlocked():
    for key, value in overrides.items():
      if value is not None:
        copy.data[key] = value
  return copy


def domain_names(config) -> Tuple[str, ...]:
  """The run's domains in head order (USSS's comma-separated `usss.domains`); () for a
  run over one dataset."""
  if config.method != "usss":
    return ()
  return tuple(n.strip() for n in config.usss.domains.split(",") if n.strip())


def domain_configs(config) -> Dict[str, ml_collections.ConfigDict]:
  """Each domain's config: the run's with its `usss.domain_data.<name>` data keys; {}
  for a run over one dataset."""
  settings = config.usss.domain_data if domain_names(config) else {}
  return {d: domain_config(config, settings[d].to_dict() if d in settings else {})
          for d in domain_names(config)}


def domain_key(domain: str, key: str) -> str:
  """The merged batch's key of `domain`'s `key` ("night/labeled_image")."""
  return f"{domain}{SEPARATOR}{key}"


class MergedBatches:
  """The domains' batch iterators zipped into one, keys prefixed (`domain_key`).

  `close()` closes every domain's iterator (each a `pipeline.Batches`, whose threads
  must be stopped); running out of one domain's batches ends the merged iterator.
  """

  def __init__(self, batches: Mapping[str, Iterator[Dict[str, np.ndarray]]]):
    if not batches:
      raise ValueError("MergedBatches needs at least one domain")
    self._batches = dict(batches)

  def __iter__(self) -> "MergedBatches":
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    merged = {}
    try:
      for domain, batches in self._batches.items():
        merged.update({domain_key(domain, k): v for k, v in next(batches).items()})
    except BaseException:
      self.close()
      raise
    return merged

  def close(self) -> None:
    for batches in self._batches.values():
      close = getattr(batches, "close", None)
      if close is not None:
        close()

  def __enter__(self) -> "MergedBatches":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _each(config):
  return list(domain_configs(config).values()) or [config]


def prepare(config) -> None:
  """Makes every domain's dataset files ready (`pipeline.prepare`)."""
  for c in _each(config):
    pipeline.prepare(c)


def num_unlabeled(config) -> int:
  """The unlabeled examples an epoch passes over: with several domains the largest
  domain's, so that an epoch shows every unlabeled set at least once (the release's
  epoch is one pass over each)."""
  return max(pipeline.num_train_examples(c)[1] for c in _each(config))


def train_batches(config, **kwargs):
  """`pipeline.train_batches(config, **kwargs)`, or every domain's merged
  (`MergedBatches`)."""
  configs = domain_configs(config)
  if not configs:
    return pipeline.train_batches(config, **kwargs)
  started = {}
  try:
    for d, c in configs.items():
      started[d] = pipeline.train_batches(c, **kwargs)
  except BaseException:
    for batches in started.values():   # stop the threads already started
      batches.close()
    raise
  return MergedBatches(started)
