"""DGCL's pieces (Wang et al., CVPR 2023): k-NN feature density, entropy-quantile
pseudo-label filtering (`pseudo_labels`: the self-training and the contrastive labels
with their two schedules) and the density-guided contrastive loss.

Written with static shapes, so that a step compiles once whatever the labels hold: a
"random subset of up to n members" is a masked random top-k (uniform keys, non-members
at -inf), a "lowest / highest density" selection a masked top-k, and every selection
carries a validity mask instead of a data-dependent length.

Density (the release's `dist_based_density_cal_multi_scale` with norm=True, mode "dot"):
features and memory rows are L2-normalised; the density of f is the mean over k in
`ks` of the mean of its k largest cosine similarities to the memory. Higher = denser.

The loss, per class c present in the labels Y (never the ignore label; by default not
class 0 either, as the release does on every dataset, `exclude_class_0`):
1. up to `max_pixels` random pixels of class c; their density against the class's
   memory (1 for all when the class has at most max(ks) pixels);
2. anchors: the projections of the `num_anchors` lowest-density pixels (with gradient);
3. positive: the plain mean of the projections of the `num_positives` highest-density
   pixels (detached) and of the memory projections with the `num_positives` highest
   stored densities;
4. negatives: `num_negatives` random pixels whose label is neither c nor ignored
   (detached);
5. InfoNCE (`contrastive.info_nce`) at temperature tau on cosine similarities, the
   positive first, after subtracting each row's maximum and with 1e-6 inside the log
   (the release's form).
The loss is the mean over the classes used; 0 when there is none.
"""
from typing import NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp

from ddfp_jax.methods.contrastive import info_nce
from ddfp_jax.methods.perturbations import l2_normalize
from ddfp_jax.models.resize import resize_bilinear, resize_nearest

Array = jax.Array


def knn_density(features: Array, memory: Array, filled: Array,
                ks: Sequence[int] = (8, 16, 32)) -> Array:
  """(n,) density of each feature (n, C) against the filled rows of memory (S, C).

  Needs at least max(ks) filled rows (the callers check). Computed in float32.
  """
  f = l2_normalize(features.astype(jnp.float32), axis=-1)
  m = l2_normalize(memory.astype(jnp.float32), axis=-1)
  similarity = jnp.where(filled[None, :], f @ m.T, -jnp.inf)
  top = jax.lax.top_k(similarity, max(ks))[0]          # descending
  # The mean over ks of the top-k means as one weighted sum: slicing top_k's output k
  # ways makes XLA's CPU backend sort every row in full (10x slower).
  weights = sum((jnp.arange(max(ks)) < k) / k for k in ks) / len(ks)
  return top @ weights


def masked_quantile(values: Array, mask: Array, q) -> Array:
  """The q-quantile of values[mask] with linear interpolation (numpy's default, as the
  release's np.percentile); +inf when nothing is masked in."""
  x = jnp.sort(jnp.where(mask, values, jnp.inf).reshape(-1))
  n = jnp.sum(mask)
  position = q * (n - 1).astype(jnp.float32)
  low = jnp.floor(position).astype(jnp.int32)
  high = jnp.minimum(low + 1, jnp.maximum(n - 1, 0))
  frac = position - low
  value = x[low] + frac * (x[high] - x[low])
  return jnp.where(n > 0, value, jnp.inf)


def entropy(probs: Array) -> Array:
  """-sum_k q_k log(q_k + 1e-10) over the last axis (the release's form)."""
  return -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)


def entropy_filter(probs: Array, valid: Array, drop_percent, values_for_quantile=None,
                   mask_for_quantile=None) -> Array:
  """Keep mask of the pixels whose prediction entropy is below the (100 - drop_percent)
  percentile of the valid pixels' entropies: the `drop_percent` % least certain valid
  pixels are dropped, and every invalid one.

  The quantile is taken over `values_for_quantile[mask_for_quantile]` when given (e.g.
  the entropies of the whole global batch, gathered over devices), else over this
  batch's valid pixels.
  """
  h = entropy(probs)
  if values_for_quantile is None:
    values_for_quantile, mask_for_quantile = h, valid
  threshold = masked_quantile(values_for_quantile, mask_for_quantile,
                              (100.0 - drop_percent) / 100.0)
  return valid & (h < threshold)


def random_members(key: Array, member: Array, k: int) -> Tuple[Array, Array]:
  """(indices (k,), valid (k,)): a uniformly random subset of min(k, #members) of the
  True entries of `member` (N,), first, then arbitrary non-members marked invalid."""
  scores = jnp.where(member, jax.random.uniform(key, member.shape), -1.0)
  top, index = jax.lax.top_k(scores, k)
  return index, top >= 0.0


class ContrastConfig(NamedTuple):
  temperature: float = 0.5
  ks: Tuple[int, ...] = (8, 16, 32)
  num_anchors: int = 200
  num_positives: int = 50
  num_negatives: int = 512
  max_pixels: int = 10_000
  exclude_class_0: bool = True
  ignore_label: int = 255
  # Classes computed at once (lax.map's batch_size): 1 keeps one class's similarity
  # matrix alive at a time; more trade memory for fewer sequential passes.
  classes_per_pass: int = 1


def class_loss(c, rep: Array, fts: Array, labels: Array, memory_fts: Array,
               memory_rep: Array, memory_density: Array, memory_filled: Array, key: Array,
               config: ContrastConfig) -> Tuple[Array, Array]:
  """(loss, used) of class c: the module docstring's steps on flat pixels.

  rep, fts: (N, C) projections and decoder features; labels (N,); the class's memory
  rows (S, C), stored densities (S,) and filled mask (S,).
  """
  n = labels.shape[0]
  member = labels == c
  count = jnp.sum(member)
  k_select, k_negative = jax.random.split(key)
  chosen, chosen_valid = random_members(k_select, member, min(config.max_pixels, n))
  density = jnp.where(
      jnp.sum(chosen_valid) > max(config.ks),
      knn_density(fts[chosen], memory_fts, memory_filled, config.ks), 1.0)
  density = jax.lax.stop_gradient(density)

  num_anchors = min(config.num_anchors, chosen.shape[0])
  low, anchor_index = jax.lax.top_k(jnp.where(chosen_valid, -density, -jnp.inf), num_anchors)
  anchor_valid = jnp.isfinite(low)
  anchors = l2_normalize(rep[chosen[anchor_index]].astype(jnp.float32), axis=-1)

  num_positives = min(config.num_positives, chosen.shape[0])
  high, positive_index = jax.lax.top_k(jnp.where(chosen_valid, density, -jnp.inf),
                                       num_positives)
  positive_valid = jnp.isfinite(high).astype(jnp.float32)
  batch_positives = jax.lax.stop_gradient(rep[chosen[positive_index]]).astype(jnp.float32)
  _, memory_index = jax.lax.top_k(jnp.where(memory_filled, memory_density, -jnp.inf),
                                  config.num_positives)
  memory_positives = memory_rep[memory_index].astype(jnp.float32)
  prototype = ((jnp.sum(batch_positives * positive_valid[:, None], axis=0)
                + jnp.sum(memory_positives, axis=0))
               / (jnp.sum(positive_valid) + config.num_positives))

  others = (labels != c) & (labels != config.ignore_label)
  negative_index, negative_valid = random_members(k_negative, others,
                                                  min(config.num_negatives, n))
  negatives = jax.lax.stop_gradient(rep[negative_index]).astype(jnp.float32)

  keys = l2_normalize(jnp.concatenate([prototype[None], negatives]), axis=-1)
  key_valid = jnp.concatenate([jnp.ones((1,), bool), negative_valid])[None]
  loss = info_nce(anchors @ keys.T, key_valid, anchor_valid, config.temperature, eps=1e-6)
  used = (count > 0) & (c != config.ignore_label)
  if config.exclude_class_0:
    used = used & (c != 0)
  return jnp.where(used, loss, 0.0), used


def contrastive_loss(rep: Array, fts: Array, labels: Array, memory, key: Array,
                     config: ContrastConfig) -> Tuple[Array, Array]:
  """(loss, number of classes used): the mean of `class_loss` over the classes used.

  rep, fts: (..., C) with labels (...) over the same pixels; `memory` a
  `class_memory` state ({"fts", "rep", "density": (K, S, ...), "count": (K,)}). The
  classes run `config.classes_per_pass` at a time (`lax.map`), so by default the memory
  similarity of one class is alive at a time.
  """
  rep = rep.reshape(-1, rep.shape[-1])
  fts = fts.reshape(-1, fts.shape[-1])
  labels = labels.reshape(-1)
  num_classes, size = memory["density"].shape
  filled = jnp.arange(size)[None, :] < memory["count"][:, None]

  def one(args):
    c, m_fts, m_rep, m_density, m_filled, k = args
    return class_loss(c, rep, fts, labels, m_fts, m_rep, m_density, m_filled, k, config)

  losses, used = jax.lax.map(one, (jnp.arange(num_classes), memory["fts"], memory["rep"],
                                   memory["density"], filled,
                                   jax.random.split(key, num_classes)),
                             batch_size=min(config.classes_per_pass, num_classes))
  n_used = jnp.sum(used)
  return jnp.sum(losses) / jnp.maximum(n_used, 1), n_used


# --- DGCL's two pseudo-label sets -----------------------------------------------------


def drop_percents(progress) -> Tuple[Array, Array]:
  """(r_u, a_t): the percent of the least certain valid pixels dropped from the
  self-training labels, 20 (1 - p), and from the contrastive labels, max(80 (1 - p), 10),
  at semi-supervised progress p = (epoch - E0) / (E - E0) in [0, 1]."""
  p = jnp.asarray(progress, jnp.float32)
  return 20.0 * (1.0 - p), jnp.maximum(80.0 * (1.0 - p), 10.0)


class PseudoLabels(NamedTuple):
  self_training: Array   # (B, H, W) int32 at the crop: argmax, ignore where dropped/padded
  contrast: Array        # (2B, h, w) int32 at the feature grid: [labeled; unlabeled]
  confidence: Array      # (B, H, W) max softmax probability at the crop (unfiltered)


def pseudo_labels(logits_u: Array, labeled_label: Array, unlabeled_ignore: Array,
                  progress, ignore_label: int = 255, axis_name=None) -> PseudoLabels:
  """DGCL's labels from the teacher's logits of the weak unlabeled view (B, h, w, K).

  Self-training (full resolution): the logits upsampled bilinearly to the crop,
  softmax, argmax; the r_u % least certain valid (non-padded) pixels and the padding set
  to ignore. Contrastive (feature grid): the labeled labels resized nearest, and for the
  unlabeled images the argmax of the softmax at the grid, the a_t % least certain valid
  pixels and the (nearest-resized) padding set to ignore. With `axis_name` each quantile
  is taken over the global batch (entropies gathered over devices), else per device (the
  release).
  """
  r_u, a_t = drop_percents(progress)
  size, grid = unlabeled_ignore.shape[1:3], logits_u.shape[1:3]

  def filtered(probs, valid, drop):
    pool = mask = None
    if axis_name is not None:
      pool = jax.lax.all_gather(entropy(probs), axis_name)
      mask = jax.lax.all_gather(valid, axis_name)
    keep = entropy_filter(probs, valid, drop, pool, mask)
    return jnp.where(keep, jnp.argmax(probs, -1).astype(jnp.int32), ignore_label)

  full = jax.nn.softmax(resize_bilinear(logits_u.astype(jnp.float32), size), axis=-1)
  self_training = filtered(full, unlabeled_ignore != ignore_label, r_u)
  at_grid = jax.nn.softmax(logits_u.astype(jnp.float32), axis=-1)
  valid_grid = resize_nearest(unlabeled_ignore, grid) != ignore_label
  unlabeled = filtered(at_grid, valid_grid, a_t)
  labeled = resize_nearest(labeled_label.astype(jnp.int32), grid)
  return PseudoLabels(jax.lax.stop_gradient(self_training),
                      jnp.concatenate([labeled, jax.lax.stop_gradient(unlabeled)]),
                      jax.lax.stop_gradient(jnp.max(full, axis=-1)))
