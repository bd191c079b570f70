"""Several datasets ("domains") in one run, each with its own label space (USSS's setting).

The input pipeline stays single-domain: a domain is the run's config with the data keys in
which that domain differs replaced (`domain_config`), and the run's training batch is the
domains' batches side by side, each key prefixed with its domain's name
(`MergedBatches`: "day/labeled_image", "night/labeled_image", ...), so that one train
step sees one labeled and one unlabeled batch of every domain.

    configs = {d: domain_config(config, overrides[d]) for d in names}
    batches = MergedBatches({d: pipeline.train_batches(c, ...) for d, c in configs.items()})
"""
from typing import Dict, Iterator, Mapping

import ml_collections
import numpy as np

from ddfp_jax.data.errors import DatasetError

SEPARATOR = "/"


def domain_config(config: ml_collections.ConfigDict,
                  overrides: Mapping[str, object]) -> ml_collections.ConfigDict:
  """A copy of `config` whose `data` has `overrides` (data key -> value) applied.

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
      copy.data[key] = value
  return copy


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

