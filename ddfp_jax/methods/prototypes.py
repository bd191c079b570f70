"""CSS's pieces (Wang et al., ICCV 2023, "Space Engage"): class prototypes and the
pseudo labels of the representation space, the mix rule, the prototype EMA, the ReCo
weighting of the unsupervised cross-entropy and the contrastive weight's ramp-down.

Representation-space labels (spec section 3, step 2): the cosine similarity of each
pixel's representation to every class prototype (a zero prototype, one never updated,
has similarity 0), softmax at temperature tau, argmax. The mix rule keeps the logit-space
label where both spaces agree and ignores the pixel elsewhere.

Prototypes (section 4, step 2): per class the mean of the valid pixels' representations
of the step; a prototype that is still exactly zero takes that mean, any other moves by
EMA, p <- alpha p + (1 - alpha) mean; classes without a valid pixel keep theirs. With an
axis name the sums and counts are taken over every device, so every device holds the
same prototypes (the release updates them per GPU from gathered representations but
skips classes absent on that GPU, so its copies drift apart).
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from ddfp_jax.methods.perturbations import l2_normalize

Array = jax.Array


def prototype_similarity(rep: Array, prototypes: Array) -> Array:
  """(..., K) cosine similarity of representations (..., D) to prototypes (K, D); 0 for
  a zero prototype (its normalised vector is 0)."""
  r = l2_normalize(rep.astype(jnp.float32), axis=-1)
  p = prototypes.astype(jnp.float32)
  norm = jnp.linalg.norm(p, axis=-1, keepdims=True)
  p = jnp.where(norm > 0, p / jnp.maximum(norm, 1e-12), 0.0)
  return r @ p.T


def representation_labels(rep: Array, prototypes: Array,
                          temperature: float = 0.5) -> Tuple[Array, Array]:
  """(confidence, label) of the representation space: softmax(similarity / tau)."""
  probs = jax.nn.softmax(prototype_similarity(rep, prototypes) / temperature, axis=-1)
  return jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32)


def mix_labels(logit_label: Array, rep_label: Array, ignore_label: int = 255) -> Array:
  """The mix rule: the logit-space label where the two spaces agree, else ignored."""
  return jnp.where(logit_label == rep_label, logit_label, ignore_label).astype(jnp.int32)


def update_prototypes(prototypes: Array, rep: Array, labels: Array, valid: Array,
                      alpha: float = 0.99, axis_name: Optional[str] = None) -> Array:
  """The prototypes after one step's valid pixels (rep (..., D), labels (...), valid
  (...)); module docstring. Representations are used as they are (not normalised)."""
  k = prototypes.shape[0]
  rep = rep.reshape(-1, rep.shape[-1]).astype(jnp.float32)
  one_hot = jax.nn.one_hot(labels.reshape(-1), k) * valid.reshape(-1, 1)
  sums, counts = one_hot.T @ rep, jnp.sum(one_hot, axis=0)
  if axis_name is not None:
    sums, counts = jax.lax.psum((sums, counts), axis_name)
  mean = sums / jnp.maximum(counts, 1.0)[:, None]
  is_zero = jnp.all(prototypes == 0, axis=-1, keepdims=True)
  moved = jnp.where(is_zero, mean, alpha * prototypes + (1.0 - alpha) * mean)
  return jax.lax.stop_gradient(jnp.where((counts > 0)[:, None], moved, prototypes))


def reco_weighted_ce_sum(logits: Array, labels: Array, confidence: Array,
                         threshold: float = 0.97, ignore_label: int = 255
                         ) -> Tuple[Array, Array]:
  """ReCo's unsupervised CE (the release's `Attention_Threshold_Loss`): (sum over the
  pseudo-labelled pixels of w_b * CE, their count), w_b the share of image b's
  pseudo-labelled pixels whose confidence reaches `threshold`. Every labelled pixel
  counts, weighted by how confident its image is. logits (B, H, W, K) at the labels'
  size; labels, confidence (B, H, W)."""
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  axes = tuple(range(1, labels.ndim))
  confident = jnp.sum(valid & (confidence >= threshold), axis=axes).astype(jnp.float32)
  weight = confident / jnp.maximum(jnp.sum(valid, axis=axes).astype(jnp.float32), 1.0)
  weight = weight.reshape((-1,) + (1,) * len(axes))
  return (jnp.sum(jnp.where(valid, weight * nll, 0.0)),
          jnp.sum(valid).astype(jnp.float32))


def rampdown(epoch, length: int = 200, scale: float = 5.0) -> Array:
  """lambda_c(e) = exp(-scale (e / length)^2) for e < length, 0 after (the release's
  `RampdownScheduler`)."""
  e = jnp.asarray(epoch, jnp.float32)
  return jnp.where(e < length, jnp.exp(-scale * (e / length) ** 2), 0.0)
