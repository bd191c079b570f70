"""`usss`: one model over several datasets with different label spaces (Kalluri et al.,
ICCV 2019; the spec's ../shared usss-algorithm.md).

A shared encoder, a segmentation head per domain and a pixel-embedding head
(`models.multi_domain.MultiDomainSegmenter`). Each step sees a labeled and an unlabeled
batch of every domain (`data.domains`: keys "<domain>/labeled_image", ...). Per domain d:

    L = sum_d [ CE_d(head d, labeled_d) + alpha H_cross(unlabeled_d) + beta H_within(unlabeled_d) ]

H_within is the mean entropy of the softmax of the unlabeled pixels' embeddings scored
against domain d's label embeddings, H_cross the same against every other domain's (their
mean; the release has exactly two domains), `entropy_module`. The label embeddings are
fixed, L2-normalised rows (`usss.label_embeddings`):

- "centroids" (default; the paper's recipe as far as it is known): stage 1 trains the
  heads alone for `schedule.sup_only_epochs` epochs; during its last `usss.collect_epochs`
  epochs every labeled pixel's embedding (the embedding head's output at its stride, the
  labels brought there by nearest resize) is summed per class on the device, and stage 2
  scores against the normalised class means. The embedding head takes no gradient in
  stage 1 (only the entropies read it), so the centroids live in the coordinates the
  entropies are computed in: a fixed random projection of the stage-1 encoder's
  features, the role the unseen paper gives PCA. A class no labeled pixel showed keeps
  a random row. With `usss.per_class` m > 1 (the paper's several centroids per class)
  the collect epochs run k-means within each class, one Lloyd iteration per epoch,
  summed on the device like the means (`make_extra_update`): the first collect epoch
  takes each class's mean and spread s (RMS distance of its pixels to the mean); the
  m seeds are mean + s r_j, r_j the class's fixed random unit rows; each later epoch
  assigns every labeled pixel to the nearest (Euclidean) of its class's centres and
  sums it there, and its first step makes the last epoch's cluster means the centres
  (a cluster left empty keeps its centre). Stage 2 scores against the last epoch's
  cluster means, normalised, the m rows of a class reduced by `usss.reduce`. The
  encoder still trains while it collects, as with one centroid (the centres move with
  it, an epoch at a time); `label_embeddings.class_centroids` is the same k-means
  offline, for "file".
- "random": the release's default, N(0, 1) rows (`usss.per_class` per class) from
  config.seed, fixed for the run; stage 2 from `schedule.sup_only_epochs` (the release: 0).
- "file": a user's `.npz` (`label_embeddings.read_embedding_file`, `usss.embedding_file`).

With alpha = beta = 0 every step is supervised (the paper's joint-training baseline) and
the unlabeled images are never read. Phases are `Phase(semi=False, stage)`: no teacher,
no EMA, no CutMix; the shared step's teacher never runs.

Each forward pass (a domain's labeled batch, then its unlabeled batch, domain after
domain) updates the BatchNorm statistics in turn, as the release's separate forwards do.
The release accumulates U_d unlabeled batches per optimiser step (about 30 at its
settings); here one unlabeled batch of `data.unlabeled_per_device` images per device and
domain stands for them (same objective, one mean over more images; BN sees them at once).
Score maps are computed at the embedding head's stride and upsampled
(`usss.upsample`: "bilinear", align_corners as every resize of the framework, or
"deconv", the release's frozen bilinear transposed convolution), the logits likewise.
"""
from typing import Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from ddfp_jax.data.domains import domain_configs, domain_key, domain_names
from ddfp_jax.data.errors import DatasetError
from ddfp_jax.methods import common
from ddfp_jax.methods import entropy_module
from ddfp_jax.methods import label_embeddings as embeddings_lib
from ddfp_jax.methods.interface import Method
from ddfp_jax.models.resize import resize_bilinear, resize_nearest, upsample_bilinear_deconv
from ddfp_jax.training.losses import cross_entropy_sum, global_mean

STAGES = ("supervised", "collect", "entropy")
EMBEDDING_SOURCES = ("centroids", "random", "file")
UPSAMPLES = ("bilinear", "deconv")
ENCODERS = ("drn", "deeplab")


class Phase(NamedTuple):
  semi: bool        # always False: USSS has no teacher
  stage: str        # one of STAGES


def config_block() -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict()
  # The domains, comma-separated, in the order of their heads; each one's data settings
  # (keys of config.data that differ from the run's) under domain_data.<name>.
  block.domains = "day,night"
  block.domain_data = ml_collections.ConfigDict({
      "day": {"demo_domain": "day", "num_classes": 11},
      "night": {"demo_domain": "night", "num_classes": 6},
  })
  block.encoder = "drn"               # "drn" (release: DRN-D) | "deeplab" (DeepLabV3+ / ResNet)
  block.drn_depth = 22                # DRN-D-22 / 38 / 54 / 105 (width: model.width)
  block.embedding_dim = 100           # the release's --em-dim
  block.none_class = True             # heads of K_d + 1 channels (the release's "None")
  block.alpha = 1.0                   # weight of H_cross
  block.beta = 1.0                    # weight of H_within
  block.temperature = 1.0             # of the cross-domain scores (the release: 1)
  block.label_embeddings = "centroids"  # "centroids" | "random" | "file" (module docstring)
  block.collect_epochs = 1            # "centroids": the last stage-1 epochs that collect
  # Rows per class: "random" draws them, "centroids" finds them by k-means (more than one
  # needs collect_epochs >= 2: the mean, then one Lloyd iteration per further epoch).
  block.per_class = 1
  block.embedding_file = ""           # "file": the .npz
  block.reduce = "logsumexp"          # several rows per class: "logsumexp" | "max"
  block.upsample = "bilinear"         # score maps and logits: "bilinear" | "deconv"
  # The fine-tuning baseline: the workdir of an earlier run whose latest student starts
  # this one, all but the heads (ddfp_jax/training/warm_start.py); "": from scratch.
  block.init_from = ""
  return block


def num_classes(config) -> Tuple[int, ...]:
  """K_d of each domain, in head order."""
  return tuple(int(c.data.num_classes) for c in domain_configs(config).values())


def uses_entropy(config) -> bool:
  return config.usss.alpha != 0 or config.usss.beta != 0


def phase_at(config, step: int) -> Phase:
  if not uses_entropy(config):
    return Phase(False, "supervised")
  epoch, warm = common.epoch_of(config, step), config.schedule.sup_only_epochs
  if epoch >= warm:
    return Phase(False, "entropy")
  if config.usss.label_embeddings == "centroids" and epoch >= warm - config.usss.collect_epochs:
    return Phase(False, "collect")
  return Phase(False, "supervised")


def init_extra(config, rng, feature_dim: int):
  """{"label_embeddings": {d: (K_d, m, D)}}, and for "centroids" what the collect stage
  sums: per class and cluster the embeddings and pixel counts ({d: (K_d, m, D)},
  {d: (K_d, m)}; for m = 1 (K_d, D) and (K_d,)); for m > 1 also the k-means centres ({d: (K_d, m, D)}, zero until the
  first collect epoch ends) and each class's summed squared norms ({d: (K_d,)})."""
  del rng, feature_dim
  u, names, ks = config.usss, domain_names(config), num_classes(config)
  dim = u.embedding_dim
  if u.label_embeddings == "file":
    table = embeddings_lib.read_embedding_file(u.embedding_file, dict(zip(names, ks)), dim)
  else:
    # Seeded per domain from config.seed: the same rows on every process and resume.
    table = {d: embeddings_lib.random_embeddings(config.seed * 1009 + i, k, dim, u.per_class)
             for i, (d, k) in enumerate(zip(names, ks))}
  extra = {"label_embeddings": {d: jnp.asarray(v) for d, v in table.items()}}
  if u.label_embeddings == "centroids":
    # One centroid per class keeps the (K, D) / (K,) layout of runs from before k-means,
    # so that their checkpoints still restore; the update reads both as (K, m, ...).
    m = u.per_class
    per = () if m == 1 else (m,)
    extra["sums"] = {d: jnp.zeros((k, *per, dim), jnp.float32) for d, k in zip(names, ks)}
    extra["counts"] = {d: jnp.zeros((k, *per), jnp.float32) for d, k in zip(names, ks)}
    if m > 1:
      extra["centres"] = {d: jnp.zeros((k, m, dim), jnp.float32) for d, k in zip(names, ks)}
      extra["square_sums"] = {d: jnp.zeros((k,), jnp.float32) for d, k in zip(names, ks)}
  return extra


def _normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def current_embeddings(extra) -> Dict[str, jax.Array]:
  """The (K, m, D) label embeddings stage 2 scores against: the collected (cluster) means
  where they have pixels; else the cluster's k-means centre where its class had pixels;
  else the fixed rows (and for "random" / "file" those only)."""
  table = extra["label_embeddings"]
  if "sums" not in extra:
    return table
  out = {}
  for d, fixed in table.items():
    sums, counts = extra["sums"][d].reshape(fixed.shape), extra["counts"][d].reshape(
        fixed.shape[:2])
    fallback = fixed
    if "centres" in extra:
      centres = extra["centres"][d]
      set_ = jnp.any(centres != 0, axis=-1, keepdims=True)
      fallback = jnp.where(set_, _normalize(centres), fixed)
    out[d] = jnp.where((counts > 0)[..., None], _normalize(sums), fallback)
  return out


def upsampler(name: str):
  """fn(x, (H, W)) -> x (N, h, w, C) brought to (H, W) (`usss.upsample`)."""
  def up(x, size):
    if name == "deconv" and size[0] % x.shape[1] == 0 and size[0] // x.shape[1] % 2 == 0:
      x = upsample_bilinear_deconv(x, size[0] // x.shape[1])
    return resize_bilinear(x, size)   # the identity once the sizes agree
  return up


def make_loss(tools):
  config, model, axis = tools.config, tools.model, tools.axis_name
  u, ignore = config.usss, config.data.ignore_label
  names = domain_names(config)
  up = upsampler(u.upsample)

  def entropy_mean(e, table, valid, temperature):
    total, count = entropy_module.entropy_sum(
        e, table, valid, temperature, u.reduce, lambda s: up(s, valid.shape[1:3]))
    return global_mean(total, count, axis)

  def loss(params, inputs, rng):
    state, batch, stage = inputs.state, inputs.batch, inputs.phase.stage
    stats = state.batch_stats
    keys = jax.random.split(rng, 2 * len(names))
    table = current_embeddings(state.extra) if stage == "entropy" else None
    total, metrics, outputs = 0.0, {}, {}
    for i, d in enumerate(names):
      image, label = batch[domain_key(d, "labeled_image")], batch[domain_key(d, "labeled_label")]
      f, stats = tools.run({"params": params, "batch_stats": stats}, image, True, keys[2 * i],
                           "encode")
      variables = {"params": params, "batch_stats": stats}
      logits = model.apply(variables, f, i, method="classify")
      sup = global_mean(*cross_entropy_sum(up(logits, label.shape[1:3]), label, ignore), axis)
      total = total + sup
      metrics[f"loss_sup/{d}"] = sup
      if stage == "collect":
        e = model.apply(variables, f, method="embed")
        outputs[d] = (e, resize_nearest(label, e.shape[1:3]))
      if stage != "entropy":
        continue
      x_u = batch[domain_key(d, "unlabeled_weak")]
      f_u, stats = tools.run({"params": params, "batch_stats": stats}, x_u, True,
                             keys[2 * i + 1], "encode")
      e = model.apply({"params": params, "batch_stats": stats}, f_u, method="embed")
      valid = batch[domain_key(d, "unlabeled_ignore")] != ignore
      within = entropy_mean(e, table[d], valid, 1.0)
      others = [entropy_mean(e, table[o], valid, u.temperature) for o in names if o != d]
      cross = sum(others) / len(others) if others else jnp.zeros(())
      total = total + u.alpha * cross + u.beta * within
      norm = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1))
      metrics.update({
          f"loss_within/{d}": within, f"loss_cross/{d}": cross,
          # This device's share of the mean embedding norm (the release has no guard on it).
          f"embedding_norm/{d}": jnp.mean(norm) / jax.lax.psum(1, axis)})
    metrics["loss_sup"] = sum(metrics[f"loss_sup/{d}"] for d in names)
    if stage == "collect":
      return total, (stats, metrics, outputs)
    return total, (stats, metrics)
  return loss


def _split_seeds(sums, counts, square_sums, rows):
  """k-means seeds (K, m, D) from a collect epoch of one cluster per class: mean + s r_j,
  s the RMS distance of the class's pixels to its mean, r_j its fixed unit rows."""
  n = jnp.maximum(counts[:, 0], 1.0)[:, None]
  mean = sums[:, 0] / n
  spread = jnp.sqrt(jnp.maximum(square_sums[:, None] / n - jnp.sum(mean ** 2, -1,
                                                                     keepdims=True), 0.0))
  return mean[:, None] + spread[:, None] * rows


def _cluster_means(sums, counts, centres):
  """Each cluster's mean; an empty cluster keeps its centre."""
  has = (counts > 0)[..., None]
  return jnp.where(has, sums / jnp.maximum(counts, 1.0)[..., None], centres)


def make_extra_update(tools):
  """The collect stage: per class (and, for m > 1, per k-means cluster) the sums and
  counts of the labeled pixels' embeddings, over all devices (module docstring)."""
  config, axis = tools.config, tools.axis_name
  names = domain_names(config)
  ks = dict(zip(names, num_classes(config)))
  m, spe = config.usss.per_class, config.steps_per_epoch
  first_collect = config.schedule.sup_only_epochs - config.usss.collect_epochs
  kmeans = m > 1 and config.usss.label_embeddings == "centroids"

  def update(extra, inputs, rng):
    del rng
    if inputs.phase.stage != "collect":
      return extra, {}
    extra = {k: dict(v) for k, v in extra.items()}
    step = inputs.state.step
    iteration = step // spe - first_collect        # the collect epoch, 0, 1, ...
    new_epoch = (step % spe == 0) & (iteration >= 1)
    seen = []
    for d in names:
      e, label = inputs.outputs[d]
      onehot = jax.nn.one_hot(label, ks[d], dtype=jnp.float32)   # ignore -> a zero row
      stored = extra["sums"][d].shape, extra["counts"][d].shape
      sums = extra["sums"][d].reshape(ks[d], m, -1)
      counts = extra["counts"][d].reshape(ks[d], m)
      if not kmeans:
        weights = onehot[..., None]
      else:
        # Each later epoch starts from the clusters the previous one summed.
        centres = jnp.where(iteration == 1,
                            _split_seeds(sums, counts, extra["square_sums"][d],
                                         extra["label_embeddings"][d]),
                            _cluster_means(sums, counts, extra["centres"][d]))
        centres = jnp.where(new_epoch, centres, extra["centres"][d])
        sums = jnp.where(new_epoch, 0.0, sums)
        counts = jnp.where(new_epoch, 0.0, counts)
        extra["centres"][d] = centres
        # Squared distances up to the pixel's own norm: |c|^2 - 2 e.c, per class k and
        # cluster j; a pixel sums into its class's nearest cluster (the first epoch: 0).
        dist = (jnp.sum(centres ** 2, -1) - 2.0 * jnp.einsum("nhwd,kmd->nhwkm", e, centres))
        nearest = jax.nn.one_hot(jnp.argmin(dist, -1), m, dtype=jnp.float32)
        first = jax.nn.one_hot(jnp.zeros(dist.shape[:-1], jnp.int32), m, dtype=jnp.float32)
        weights = onehot[..., None] * jnp.where(iteration == 0, first, nearest)
        square = jnp.einsum("nhwk,nhw->k", onehot, jnp.sum(e ** 2, -1))
        extra["square_sums"][d] = extra["square_sums"][d] + jax.lax.psum(square, axis)
      sums = sums + jax.lax.psum(jnp.einsum("nhwkm,nhwd->kmd", weights, e), axis)
      counts = counts + jax.lax.psum(jnp.sum(weights, axis=(0, 1, 2)), axis)
      extra["sums"][d], extra["counts"][d] = sums.reshape(stored[0]), counts.reshape(stored[1])
      seen.append(jnp.mean((jnp.sum(counts, -1) > 0).astype(jnp.float32)))
    return extra, {"centroid_classes_seen": sum(seen) / len(seen)}
  return update


def check_config(config) -> list:
  u, problems = config.usss, []
  names = domain_names(config)
  if not names or len(set(names)) != len(names):
    problems.append(f"usss.domains ({u.domains!r}) must name different domains, "
                    "comma-separated (e.g. 'cityscapes,camvid')")
  elif len(names) < 2 and u.alpha != 0:
    problems.append(f"usss.alpha ({u.alpha}) weighs the cross-domain entropy, which needs "
                    f"two or more domains; usss.domains is {u.domains!r}")
  # Settings of a domain the run leaves out are fine (a one-domain baseline of a pair);
  # a named domain without settings next to unnamed ones is a misspelt name.
  unnamed = sorted(set(u.domain_data.keys()) - set(names))
  bare = [d for d in names if d not in u.domain_data]
  if unnamed and bare:
    problems.append(f"usss.domains names {', '.join(bare)}, which usss.domain_data has no "
                    f"settings for, and usss.domain_data has settings for "
                    f"{', '.join(unnamed)}, which usss.domains does not name: a misspelt "
                    "domain?")
  if u.get("init_from", "") is None:
    problems.append("usss.init_from is not set: a fine-tuning config starts from another "
                    "run's encoder; pass that run's workdir, --config.usss.init_from=DIR "
                    "(or '' to train from scratch)")
  try:
    domain_configs(config)
  except DatasetError as e:
    problems.append(str(e).rstrip("."))
  except TypeError as e:   # a value of another type than config.data's key
    problems.append(f"usss.domain_data: {e}")
  if u.label_embeddings == "centroids" and not (
      1 <= u.collect_epochs <= config.schedule.sup_only_epochs) and uses_entropy(config):
    problems.append(f"usss.label_embeddings 'centroids' collects them in the last "
                    f"usss.collect_epochs ({u.collect_epochs}) of the "
                    f"schedule.sup_only_epochs ({config.schedule.sup_only_epochs}) "
                    "supervised epochs: set 1 <= collect_epochs <= sup_only_epochs")
  if (u.label_embeddings == "centroids" and u.per_class > 1 and u.collect_epochs < 2
      and uses_entropy(config)):
    problems.append(f"usss.per_class ({u.per_class}) centroids per class are found by "
                    f"k-means over the collect epochs, the first for the class means, one "
                    f"Lloyd iteration per further epoch: set usss.collect_epochs to 2 or "
                    f"more (it is {u.collect_epochs})")
  if u.label_embeddings == "file" and not u.embedding_file:
    problems.append("usss.label_embeddings 'file' reads usss.embedding_file: give the .npz")
  if u.alpha < 0 or u.beta < 0:
    problems.append(f"usss.alpha ({u.alpha}) and usss.beta ({u.beta}) must be 0 or more")
  if config.model.pretrained and u.encoder != "drn":
    problems.append("usss loads pretrained weights into its DRN-D encoder only "
                    "(model.pretrained: fyu/drn's drn_d_*.pth); with usss.encoder "
                    f"{u.encoder!r} unset model.pretrained to train it from scratch")
  if config.train.num_images > 0:
    problems.append("the training pictures show one label space; set train.num_images=0 "
                    "for usss")
  return problems


METHOD = Method(phase_at=phase_at, make_loss=make_loss, config_block=config_block,
                init_extra=init_extra, make_extra_update=make_extra_update,
                check_config=check_config)
