"""Gaussian-mixture base density of the flow: K unit-covariance components, uniform weights.

``gmm_distribution`` builds the mixture with distrax (for sampling and as the reference the
tests compare against); the log-probabilities used in training are computed here directly
so that their memory stays O(N·K) for the ~10^5 pixel features of a training step.
"""
import math

import distrax
import jax
import jax.numpy as jnp


def init_means(key: jax.Array, num_classes: int, dim: int) -> jax.Array:
  """Component means drawn from N(0, I), as the release initialises them; shape (K, dim)."""
  return jax.random.normal(key, (num_classes, dim), jnp.float32)


def gmm_distribution(means: jax.Array) -> distrax.MixtureSameFamily:
  """The base mixture Σ_k π_k N(μ_k, I) with π = softmax(ones(K)), i.e. uniform.

  Args:
    means: (K, D) component means.

  Returns:
    A distrax mixture over R^D.
  """
  means = jnp.asarray(means, jnp.float32)
  # The release keeps unnormalised weights of ones and normalises them with a softmax;
  # the same logits make the weights uniform here.
  mixing = distrax.Categorical(logits=jnp.ones(means.shape[:1], jnp.float32))
  components = distrax.MultivariateNormalDiag(loc=means, scale_diag=jnp.ones_like(means))
  return distrax.MixtureSameFamily(mixing, components)


def log_mixture_weights(means: jax.Array) -> jax.Array:
  """log π_k of the base mixture, shape (K,)."""
  return jax.nn.log_softmax(gmm_distribution(means).mixture_distribution.logits)


def component_log_probs(z: jax.Array, means: jax.Array) -> jax.Array:
  """log N(z | μ_k, I) for every component.

  Args:
    z: (..., D) latents.
    means: (K, D) component means.

  Returns:
    (..., K) float32 log-densities −½ (D log 2π + ‖z − μ_k‖²).
  """
  z = jnp.asarray(z, jnp.float32)
  means = jnp.asarray(means, jnp.float32)
  # Broadcasting z − μ would materialise an (N, K, D) tensor: with N ≈ 66k pixels, K = 21
  # and D = 256 that is ~1.4 GB per step. Expanding ‖z − μ‖² = ‖z‖² − 2 z·μ + ‖μ‖² needs
  # only the (N, K) matmul. The expansion subtracts large nearly equal numbers, so the
  # matmul runs at full float32 precision (GPUs may otherwise use reduced-precision passes).
  cross = jnp.einsum('...d,kd->...k', z, means, precision=jax.lax.Precision.HIGHEST)
  sq_dist = (jnp.sum(z * z, axis=-1, keepdims=True) - 2.0 * cross
             + jnp.sum(means * means, axis=-1))
  # Rounding can push a tiny distance below zero; a distance is never negative.
  sq_dist = jnp.maximum(sq_dist, 0.0)
  dim = z.shape[-1]
  return -0.5 * (dim * math.log(2.0 * math.pi) + sq_dist)


def class_logits(z: jax.Array, means: jax.Array) -> jax.Array:
  """FlowGMM class scores log N(z | μ_k, I) + log π_k, shape (..., K)."""
  return component_log_probs(z, means) + log_mixture_weights(means)


def mixture_log_prob(z: jax.Array, means: jax.Array) -> jax.Array:
  """log Σ_k π_k N(z | μ_k, I), shape (...)."""
  return jax.nn.logsumexp(class_logits(z, means), axis=-1)


def labeled_log_prob(z: jax.Array, means: jax.Array, labels: jax.Array,
                     unlabeled_label: int) -> jax.Array:
  """Per-row log-likelihood under the label's component, or the mixture when unlabeled.

  Follows the release: a row of class c scores log N(z | μ_c, I) *without* log π_c (with
  uniform weights this only shifts the loss by log K per labeled row).

  Args:
    z: (..., D) latents.
    means: (K, D) component means.
    labels: (...) int labels. Values in [0, K) select that component;
      ``unlabeled_label`` selects the mixture; anything else (e.g. the ignore label 255)
      scores 0 and must be masked out by the caller.
    unlabeled_label: The marker for "use the mixture".

  Returns:
    (...) float32 log-likelihoods.
  """
  comp = component_log_probs(z, means)
  num_classes = comp.shape[-1]
  mixture = jax.nn.logsumexp(comp + log_mixture_weights(means), axis=-1)
  labels = jnp.asarray(labels)
  is_class = (labels >= 0) & (labels < num_classes)
  # Gather with an in-range index everywhere and select afterwards: shapes stay static
  # and no out-of-bounds gather is issued for ignored rows.
  safe = jnp.where(is_class, labels, 0)
  own = jnp.take_along_axis(comp, safe[..., None], axis=-1)[..., 0]
  out = jnp.where(is_class, own, 0.0)
  return jnp.where(labels == unlabeled_label, mixture, out)
