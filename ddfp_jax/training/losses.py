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
