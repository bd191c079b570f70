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

The contrastive loss (section 4; `contrastive_loss`): per class c with a valid pixel,
`num_queries` anchors drawn uniformly with replacement from c's hard pixels (those
whose indicator Q_c is below delta_s), the positive the class prototype, and per anchor
`num_negatives` negatives: each a class j != c drawn with probability softmax_j(cos(P_c,
P_j) / tau) over the other valid classes (similar classes more often), then a pixel of j
uniformly with replacement. InfoNCE (`contrastive.info_nce`, the plain cross-entropy),
summed over classes and divided by the number of valid classes; 0 with fewer than two.
Pools are static-shaped: the pixels sorted by class, each class a run of that order, so
drawing "a member of class j" is one uniform index into its run.
"""
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from ddfp_jax.methods.contrastive import info_nce
from ddfp_jax.methods.perturbations import l2_normalize

Array = jax.Array


def normalized_prototypes(prototypes: Array) -> Array:
  """Unit prototypes; a zero prototype stays 0."""
  p = prototypes.astype(jnp.float32)
  norm = jnp.linalg.norm(p, axis=-1, keepdims=True)
  return jnp.where(norm > 0, p / jnp.maximum(norm, 1e-12), 0.0)


def prototype_similarity(rep: Array, prototypes: Array) -> Array:
  """(..., K) cosine similarity of representations (..., D) to prototypes (K, D); 0 for
  a zero prototype (its normalised vector is 0)."""
  return l2_normalize(rep.astype(jnp.float32), axis=-1) @ normalized_prototypes(prototypes).T


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


# --- the contrastive loss ---------------------------------------------------------------


class Pools(NamedTuple):
  """Pixels grouped by class: class c's members are order[start[c]:start[c] + count[c]]."""
  order: Array   # (N,) pixel indices sorted by class, non-members last
  start: Array   # (K,)
  count: Array   # (K,)


def class_pools(labels: Array, member: Array, num_classes: int) -> Pools:
  """Pools of the pixels with `member` True, by label (labels, member (N,))."""
  key = jnp.where(member, labels, num_classes)
  order = jnp.argsort(key, stable=True)
  count = jnp.sum(jax.nn.one_hot(key, num_classes, dtype=jnp.int32), axis=0)
  return Pools(order, jnp.cumsum(count) - count, count)


def sample_members(key: Array, pools: Pools, classes: Array) -> Array:
  """A pixel index drawn uniformly (with replacement) from the pool of each entry of
  `classes` (any shape); an empty pool gives an arbitrary index (callers mask it)."""
  u = jax.random.uniform(key, classes.shape)
  count = pools.count[classes]
  k = jnp.minimum(jnp.floor(u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
  return pools.order[jnp.clip(pools.start[classes] + k, 0, pools.order.shape[0] - 1)]


def negative_class_probs(unit_prototypes: Array, present: Array, c, temperature: float):
  """(K,) probabilities of the negative-class draw for anchors of class c: softmax of
  cos(P_c, P_j) / tau over the present classes j != c, 0 for the others."""
  k = unit_prototypes.shape[0]
  logits = unit_prototypes @ unit_prototypes[c] / temperature
  return jax.nn.softmax(jnp.where(present & (jnp.arange(k) != c), logits, -jnp.inf))


def inverse_cdf(probs: Array, u: Array) -> Array:
  """The class of each uniform u in [0, 1) (any shape) under `probs` (K,): the first j
  with cdf_j > u * cdf_K. A class of probability 0 has an empty interval, and a u that
  rounding puts past the end goes to the last class of positive probability.

  One uniform and K comparisons per draw: `jax.random.categorical` draws K Gumbels per
  draw (256 x 512 x K logarithms per class and step), which dominated CSS's step on a CPU.
  """
  cdf = jnp.cumsum(probs)
  index = jnp.sum(cdf <= (u * cdf[-1])[..., None], axis=-1)
  last = probs.shape[0] - 1 - jnp.argmax(probs[::-1] > 0)
  return jnp.minimum(index, last).astype(jnp.int32)


class ContrastSettings(NamedTuple):
  num_queries: int = 256
  num_negatives: int = 512
  temperature: float = 0.5


def draw_indices(key: Array, pools: Pools, hard_pools: Pools, unit_prototypes: Array, c,
                 settings: ContrastSettings) -> Tuple[Array, Array]:
  """(anchor pixels (Q,), negative pixels (Q, M)) of class c (module docstring)."""
  q, m = settings.num_queries, settings.num_negatives
  k_anchor, k_class, k_pixel = jax.random.split(key, 3)
  anchors = sample_members(k_anchor, hard_pools, jnp.full((q,), c))
  probs = negative_class_probs(unit_prototypes, pools.count > 0, c, settings.temperature)
  classes = inverse_cdf(probs, jax.random.uniform(k_class, (q, m)))
  return anchors, sample_members(k_pixel, pools, classes)


# Up to this many pixels per negative, the anchors' similarities to every pixel are one
# matmul and the negatives' are picked from it; beyond, the negatives' representations
# are gathered (Q x M x D). The two give the same loss and gradient (tests); which is
# faster is measured by `python -m benchmarks.prototype_contrast` (results/
# prototype_contrast_*.md: on a 2-core AMD EPYC at D = 64 and 11 classes the matmul won
# at every N measured, 36 vs 347 ms at the demo's 4096 and 221 vs 331 ms at 65 536). The
# bound is kept for memory: the matmul holds K x Q x N similarities (740 MB at K = 11,
# N = 65 536, float32), the gather K x Q x M x D.
DENSE_PIXELS_PER_NEGATIVE = 32


def contrastive_loss(rep: Array, labels: Array, valid: Array, hard: Array,
                     prototypes: Array, key: Array, settings: ContrastSettings,
                     dense: Optional[bool] = None) -> Tuple[Array, Array]:
  """(L_c, number of valid classes) of the module docstring.

  rep (N, D) with gradient (anchors); labels, valid, hard (N,); prototypes (K, D) the
  positives (this step's, detached). Negatives are detached representations. `dense`:
  how the negatives' similarities are computed (None: by N, DENSE_PIXELS_PER_NEGATIVE).
  """
  num_classes = prototypes.shape[0]
  if dense is None:
    dense = rep.shape[0] <= DENSE_PIXELS_PER_NEGATIVE * settings.num_negatives
  rep = rep.astype(jnp.float32)
  unit = l2_normalize(rep, axis=-1)
  keys_detached = jax.lax.stop_gradient(unit)
  pools = class_pools(labels, valid, num_classes)
  hard_pools = class_pools(labels, valid & hard, num_classes)
  present = pools.count > 0
  n_present = jnp.sum(present)
  unit_p = jax.lax.stop_gradient(normalized_prototypes(prototypes))

  def one(args):
    c, k = args
    anchor_index, negative_index = draw_indices(k, pools, hard_pools, unit_p, c, settings)
    anchors = unit[anchor_index]
    if dense:
      negatives = jnp.take_along_axis(anchors @ keys_detached.T, negative_index, axis=1)
    else:
      negatives = jnp.einsum("qd,qmd->qm", anchors, keys_detached[negative_index])
    similarity = jnp.concatenate([(anchors @ unit_p[c])[:, None], negatives], axis=1)
    loss = info_nce(similarity, True, jnp.ones((settings.num_queries,)), settings.temperature)
    return jnp.where(present[c] & (hard_pools.count[c] > 0), loss, 0.0)

  losses = jax.lax.map(one, (jnp.arange(num_classes),
                             jax.random.split(key, num_classes)))
  total = jnp.sum(losses) / jnp.maximum(n_present, 1).astype(jnp.float32)
  return jnp.where(n_present >= 2, total, 0.0), n_present
