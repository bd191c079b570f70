"""USSS's entropy module (Kalluri et al., ICCV 2019; the spec's ../shared
usss-algorithm.md section 3): pixel embeddings scored against fixed label embeddings.

For an unlabeled image of domain d, each pixel's embedding e(p) (the embedding head's
output, not normalised) is scored against the L2-normalised label embeddings of its own
domain, s_d(p) = E_d e(p), and of the other domain, s_o(p) = E_o e(p). The losses are the
mean entropies of the softmax of those scores:

    H_within = mean_p H(softmax(s_d(p))),   H_cross = mean_p H(softmax(s_o(p) / t)),
    L_ent = alpha H_cross + beta H_within.

Low within-domain entropy asks every pixel to sit near one of its domain's labels; low
cross-domain entropy to sit near one of the other domain's, which aligns the two label
spaces through the shared encoder. Gradients reach e only (E is fixed). Nothing stops e
from growing to lower both entropies; the release has no guard and neither is one added
here (the `embedding_norm` metric shows it).

Several centroids per class (label embeddings (K, m, D)): a class's score is the
log-sum-exp of its centroids' scores (`reduce = "logsumexp"`: the class's probability is
the sum of its centroids' in the softmax over all K m centroids, so the entropy is that of
the class marginal) or their maximum (`"max"`). With m = 1 both are the plain score.

The scores are computed at the embedding head's stride and the K score maps upsampled,
rather than upsampling the D-channel embedding first as the release does: both the
upsampling and the scoring are linear, so the scores are the same (a test checks it) for
a fraction of the memory when K < D.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
REDUCTIONS = ("logsumexp", "max")


def class_scores(embedding: Array, label_embedding: Array, reduce: str = "logsumexp",
                 temperature: float = 1.0) -> Array:
  """(..., K) class scores of pixel embeddings (..., D) against label embeddings (K, D)
  or (K, m, D) (module docstring), each centroid score divided by `temperature`."""
  if reduce not in REDUCTIONS:
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
  e = label_embedding if label_embedding.ndim == 3 else label_embedding[:, None]
  scores = jnp.einsum("...d,kmd->...km", embedding.astype(jnp.float32), e) / temperature
  if e.shape[1] == 1:
    return scores[..., 0]
  if reduce == "max":
    return jnp.max(scores, axis=-1)
  return jax.nn.logsumexp(scores, axis=-1)


def entropy(scores: Array) -> Array:
  """H(softmax(scores)) over the last axis, in nats: in [0, log K]."""
  log_p = jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def entropy_sum(embedding: Array, label_embedding: Array, valid: Optional[Array] = None,
                temperature: float = 1.0, reduce: str = "logsumexp",
                upsample: Optional[Callable[[Array], Array]] = None):
  """(sum of the per-pixel entropies over the valid pixels, their count).

  embedding (B, h, w, D) at the embedding head's stride; `upsample` maps the (B, h, w, K)
  score maps to the valid mask's (B, H, W) grid (None: the scores are already there).
  The caller divides, over devices too (`training.losses.global_mean`).
  """
  scores = class_scores(embedding, label_embedding, reduce, temperature)
  if upsample is not None:
    scores = upsample(scores)
  h = entropy(scores)
  if valid is None:
    valid = jnp.ones(h.shape, bool)
  return jnp.sum(jnp.where(valid, h, 0.0)), jnp.sum(valid).astype(jnp.float32)
