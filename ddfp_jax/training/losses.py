"""Pixel losses with global normalisation across devices.

The release averages cross-entropy over each GPU's valid pixels and then averages the
gradients over GPUs, so a GPU with few confident pixels weighs as much as one with many,
and results change with the device count. Here each device returns the *sum* over its
pixels and the count; the step divides by the count summed over all devices. The loss is
then the mean over the global batch whatever the number of devices.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp


def cross_entropy_sum(logits: jnp.ndarray, labels: jnp.ndarray,
                      ignore_label: int = 255) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(sum of per-pixel CE over non-ignored pixels, their count), float32."""
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.float32)


def global_mean(local_sum: jnp.ndarray, local_count: jnp.ndarray,
                axis_name: Optional[str]) -> jnp.ndarray:
  """This device's share of the global mean: local_sum / (count over all devices)."""
  count = local_count if axis_name is None else jax.lax.psum(local_count, axis_name)
  return local_sum / jnp.maximum(count, 1.0)


def ohem_cross_entropy_sum(logits: jnp.ndarray, labels: jnp.ndarray, thresh: float = 0.7,
                           min_kept: int = 100_000, ignore_label: int = 255,
                           axis_name: Optional[str] = None
                           ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Online hard example mining CE (the U2PL-family `OhemCrossEntropy2dTensor`, DGCL's
  Cityscapes loss): (sum of CE over the kept pixels, their count).

  A valid pixel is kept when the probability of its true class is at most
  max(thresh, the `min_kept`-th smallest such probability); with fewer than `min_kept`
  valid pixels every valid pixel is kept. With `axis_name` the order statistic is taken
  over the global batch (the probabilities gathered over devices), so the kept set does
  not depend on how the batch is split; without it, over this device's pixels (the
  release's per-GPU rule).
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  true_prob = jnp.where(valid, jnp.exp(-nll), 1.0)   # ignored pixels are never hard
  pool, num_valid = true_prob.reshape(-1), jnp.sum(valid)
  if axis_name is not None:
    pool = jax.lax.all_gather(pool, axis_name).reshape(-1)
    num_valid = jax.lax.psum(num_valid, axis_name)
  k = min(int(min_kept), pool.shape[0])
  kth = jnp.sort(pool)[k - 1]
  threshold = jnp.where(num_valid < min_kept, jnp.inf,
                        jnp.maximum(jax.lax.stop_gradient(kth), thresh))
  kept = valid & (jax.lax.stop_gradient(true_prob) <= threshold)
  return jnp.sum(jnp.where(kept, nll, 0.0)), jnp.sum(kept).astype(jnp.float32)


def valid_fraction_weighted_ce(logits: jnp.ndarray, labels: jnp.ndarray,
                               ignore_label: int = 255,
                               axis_name: Optional[str] = None) -> jnp.ndarray:
  """U2PL's unsupervised loss, this device's share: the mean CE over the valid pixels
  times (all pixels / valid pixels), both counted over the global batch with
  `axis_name`. It keeps the loss's scale as the entropy filter drops pixels."""
  total, count = cross_entropy_sum(logits, labels, ignore_label)
  pixels = jnp.asarray(labels.size, jnp.float32)
  if axis_name is not None:
    count, pixels = jax.lax.psum((count, pixels), axis_name)
  count = jnp.maximum(count, 1.0)
  return total / count * (pixels / count)
