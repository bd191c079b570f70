"""Feature density p_V(v) = p_Z(φ(v)) · |det ∂φ/∂v| and the flow's training loss (eq. 7-9).

Also holds the fixed-size pixel sampler that picks the feature vectors the flow trains on.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddfp_jax.models import gmm
from ddfp_jax.models.flow import CouplingFlow

IGNORE_LABEL = 255
# Label of a pixel that carries no class: its likelihood is the whole mixture's.
UNLABELED = -1


class FeatureDensity(nn.Module):
  """Normalising flow with a GMM base over (..., D) decoder features.

  Params: ``flow`` (the ``CouplingFlow``) and ``means`` (K, D), initialised N(0, I) with D
  read from the input at ``init``.

  Attributes:
    num_classes: K, the number of mixture components (one per class).
    num_blocks: Coupling blocks in the flow.
    hidden: Width of the flow's subnets.
    clamp: Soft bound on the flow's log-scales.
    learn_means: Whether the means receive gradients (the release trains them).
    precision: Matmul precision of the flow's subnets (see ``CouplingBlock``).
  """
  num_classes: int
  num_blocks: int = 2
  hidden: int = 256
  clamp: float = 2.0
  learn_means: bool = True
  precision: Any = None

  def setup(self):
    self.flow = CouplingFlow(self.num_blocks, self.hidden, self.clamp, self.precision)

  @nn.compact
  def _means(self, dim: int) -> jax.Array:
    # Declared lazily (a compact method beside setup) so that D comes from the features
    # and the param sits at the top level as ``means``.
    means = self.param('means', lambda key: gmm.init_means(key, self.num_classes, dim))
    return means if self.learn_means else jax.lax.stop_gradient(means)

  def _latent(self, v: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    z, log_det = self.flow(v)
    return z, log_det, self._means(v.shape[-1])

  def __call__(self, v: jax.Array) -> jax.Array:
    """Same as ``log_prob``; lets ``init(key, v)`` create every param."""
    return self.log_prob(v)

  def log_prob(self, v: jax.Array) -> jax.Array:
    """Mixture log-density log p_V(v) (eq. 8), shape v.shape[:-1]."""
    z, log_det, means = self._latent(v)
    return gmm.mixture_log_prob(z, means) + log_det

  def labeled_log_prob(self, v: jax.Array, labels: jax.Array) -> jax.Array:
    """log p_V(v | label): the class component for labels in [0, K), the mixture for
    ``UNLABELED``, and log|det J| alone for any other label (mask those out).

    Args:
      v: (..., D) features.
      labels: (...) int labels.

    Returns:
      (...) float32 log-likelihoods.
    """
    z, log_det, means = self._latent(v)
    return gmm.labeled_log_prob(z, means, labels, UNLABELED) + log_det

  def class_logits(self, v: jax.Array) -> jax.Array:
    """FlowGMM class scores log N(φ(v) | μ_k, I) + log π_k, shape (..., K).

    log|det J| is left out: it is the same for every class and does not change the argmax.
    """
    z, _, means = self._latent(v)
    return gmm.class_logits(z, means)

  def nll(self, v: jax.Array, labels: jax.Array,
          weights: Optional[jax.Array] = None) -> jax.Array:
    """Flow training loss (eq. 9): weighted mean negative log-likelihood.

    Labeled rows use their class component, ``UNLABELED`` rows the mixture. Rows whose
    label is neither (``IGNORE_LABEL`` and any other value) or whose weight is 0 are left
    out of both the sum and the count.

    Args:
      v: (..., D) features.
      labels: (...) int labels.
      weights: Optional (...) non-negative row weights, e.g. the sampler's mask.

    Returns:
      Scalar −Σ w·ll / max(Σ w, 1).
    """
    labels = jnp.asarray(labels)
    known = ((labels >= 0) & (labels < self.num_classes)) | (labels == UNLABELED)
    w = known.astype(jnp.float32)
    if weights is not None:
      w = w * jnp.asarray(weights, jnp.float32)
    keep = w > 0
    # Excluded rows (padding, ignored pixels) may hold anything, even non-finite values.
    # Multiplying by a zero weight is not enough (0 · inf = NaN, in the loss or in the
    # parameter gradients through the flow), so such rows are replaced by zeros before the
    # flow and their likelihoods selected away after it.
    v = jnp.where(keep[..., None], jnp.asarray(v, jnp.float32), 0.0)
    ll = self.labeled_log_prob(v, labels)
    weighted = jnp.where(keep, w * ll, 0.0)
    return -jnp.sum(weighted) / jnp.maximum(jnp.sum(w), 1.0)


def sample_pixels(key: jax.Array, valid: jax.Array,
                  num_samples: int) -> Tuple[jax.Array, jax.Array]:
  """Uniform sampling without replacement of up to ``num_samples`` valid rows.

  The number of valid pixels changes from step to step, but under jit/pmap the output
  shape must not, or every step would recompile. So every row gets a uniform score,
  invalid rows get −inf, and the top ``min(num_samples, N)`` scores are taken: the valid
  rows among them form a uniformly random subset, and a mask marks the picks that landed
  on invalid rows because too few valid ones existed.

  Args:
    key: PRNG key.
    valid: (N,) bool, which rows may be picked.
    num_samples: Wanted sample count (static).

  Returns:
    ``(indices, sample_mask)``, both of shape (min(num_samples, N),): int32 row indices
    and a bool mask that is True where the picked row is valid.
  """
  valid = jnp.asarray(valid, bool)
  k = min(num_samples, valid.shape[0])
  scores = jax.random.uniform(key, valid.shape)
  scores = jnp.where(valid, scores, -jnp.inf)
  _, indices = jax.lax.top_k(scores, k)
  return indices, valid[indices]
