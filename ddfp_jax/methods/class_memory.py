"""DGCL's class-wise feature memory, as static arrays.

Per class c: up to `size` decoder features ("fts"), their projections ("rep") and the
density each feature had against the class's memory when it was inserted ("density",
never refreshed). The release prepends the new entries and truncates to `size` (newest
first, FIFO); only which entries are held and their stored densities matter, so a ring
buffer per class is an exact replacement: "next" is where the class writes next, "count"
how many rows hold entries (min(inserted, size)).

    memory = init(num_classes, size, feature_dim, projection_dim)
    memory = update(memory, fts, rep, labels, key, per_class=1000, ks=(8, 16, 32))

`update` takes the pixels of the whole global batch (the caller gathers them over
devices and processes, so every device holds the same memory); per class up to
`per_class` random pixels of that class are written, each with its density against the
class's memory as it was before the update when that memory holds more than
`per_class` entries, else 0 (the release's rule). "Full" is every class at `size`.
"""
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from ddfp_jax.methods.density_contrast import knn_density, random_members

Array = jax.Array


def init(num_classes: int, size: int, feature_dim: int, projection_dim: int,
         dtype=jnp.float32) -> Dict[str, Array]:
  return {"fts": jnp.zeros((num_classes, size, feature_dim), dtype),
          "rep": jnp.zeros((num_classes, size, projection_dim), dtype),
          "density": jnp.zeros((num_classes, size), jnp.float32),
          "count": jnp.zeros((num_classes,), jnp.int32),
          "next": jnp.zeros((num_classes,), jnp.int32)}


def is_full(memory: Dict[str, Array]) -> Array:
  return jnp.all(memory["count"] >= memory["density"].shape[1])


def update(memory: Dict[str, Array], fts: Array, rep: Array, labels: Array, key: Array,
           per_class: int = 1000, ks: Sequence[int] = (8, 16, 32),
           classes_per_pass: int = 1) -> Dict[str, Array]:
  """The memory after inserting the pixels (fts (..., C), rep (..., D), labels (...)) of
  one step (module docstring). Labels outside [0, K) (the ignore label) are skipped.
  `classes_per_pass` classes are computed at once (lax.map's batch_size)."""
  fts = fts.reshape(-1, fts.shape[-1])
  rep = rep.reshape(-1, rep.shape[-1])
  labels = labels.reshape(-1)
  num_classes, size = memory["density"].shape
  per_class = min(per_class, labels.shape[0], size)

  def one(args):
    c, m_fts, m_rep, m_density, count, start, k = args
    index, valid = random_members(k, labels == c, per_class)
    # In pixel order, as the release lists a class's pixels (when it takes them all).
    order = jnp.argsort(jnp.where(valid, index, labels.shape[0]))
    index, valid = index[order], valid[order]
    new_fts, new_rep = fts[index].astype(m_fts.dtype), rep[index].astype(m_rep.dtype)
    filled = jnp.arange(size) < count
    density = jnp.where(count > per_class,
                        knn_density(new_fts, m_fts, filled, ks) if size >= max(ks)
                        else jnp.zeros(per_class), 0.0)
    n_new = jnp.sum(valid).astype(jnp.int32)
    # New entry i of n goes to row (start + n - 1 - i) mod size: the ring then overwrites
    # a step's entries from its last one back, as the release's truncation of
    # [newest, ..., oldest] drops the oldest step's last entries first. Invalid rows
    # write nowhere (an index past the end, dropped).
    rows = jnp.where(valid, (start + n_new - 1 - jnp.arange(per_class)) % size, size)
    m_fts = m_fts.at[rows].set(new_fts, mode="drop")
    m_rep = m_rep.at[rows].set(new_rep, mode="drop")
    m_density = m_density.at[rows].set(density, mode="drop")
    return (m_fts, m_rep, m_density, jnp.minimum(count + n_new, size),
            (start + n_new) % size)

  out = jax.lax.map(one, (jnp.arange(num_classes), memory["fts"], memory["rep"],
                          memory["density"], memory["count"], memory["next"],
                          jax.random.split(key, num_classes)),
                     batch_size=min(classes_per_pass, num_classes))
  return dict(zip(("fts", "rep", "density", "count", "next"), out))
