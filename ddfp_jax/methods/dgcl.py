"""`dgcl`: density-guided contrastive learning (Wang et al., CVPR 2023), as released.

After the supervised warm-up, one step (the release's, ../shared spec sections 3-5):
1. the teacher on [labeled, weak unlabeled] (`semi.teacher_train_mode`: the release runs
   it in train mode) gives two label sets (`density_contrast.pseudo_labels`): the
   self-training labels at the crop (the r_u = 20 (1 - p) % least certain pixels dropped)
   and the contrastive labels at the feature grid (ground truth for the labeled images;
   for the unlabeled, the a_t = max(80 (1 - p), 10) % least certain dropped), p the
   semi-supervised progress;
2. CutMix of the weak view (the DGCL configs turn the colour and blur augmentation off,
   so the "strong" view is the weak one mixed) with the self-training labels;
3. the student on [labeled, weak unlabeled, mixed]: L = L_sup + semi.lambda_image * L_u +
   dgcl.lambda_contrast * L_c, with L_sup cross-entropy or OHEM (+ aux_weight * the same
   on the auxiliary head when the model has one), L_u U2PL's valid-fraction-weighted CE
   of the mixed view, L_c the density-guided contrastive loss
   (`density_contrast.contrastive_loss`) of the projections of [labeled, weak unlabeled]
   against the class memory, 0 until every class's memory is full;
4. the memory (`class_memory`, the method's extra state) takes up to
   `memory_per_class` random pixels per class of the step's detached features and
   projections, gathered over all devices.

`dgcl.scope` says where the statistics of a step are taken: "global" (default) over
the whole batch of all devices (the entropy quantiles, OHEM's order statistic and the
contrastive loss, whose anchors, positives and negatives are then drawn from the global
batch), so a run does not depend on how its batch is split over devices; "device" per
device, as the release (its L_c is each GPU's loss, averaged). `contrast_grad_scale`
reproduces the release's effective contrastive weight: its `all_reduce(L_c) / W` is not
seen by autograd, so the gradient of L_c is divided by its W GPUs (1/4 on VOC, 1/8 on
Cityscapes) while the logged value is not.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ddfp_jax.methods import class_memory, common
from ddfp_jax.methods import density_contrast as dc
from ddfp_jax.methods.interface import Method, Teacher
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.training.losses import valid_fraction_weighted_ce

SCOPES = ("global", "device")
SUP_LOSSES = common.SUP_LOSSES


class Phase(NamedTuple):
  semi: bool


def config_block() -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict()
  block.lambda_contrast = 0.5         # weight of L_c (L_u's is semi.lambda_image)
  # Gradient of L_c times this, its value unscaled: 1/W reproduces the release on W GPUs.
  block.contrast_grad_scale = 1.0
  block.scope = "global"              # "global" | "device" (release), module docstring
  block.sup_loss = "ce"               # "ce" (VOC) | "ohem" (Cityscapes)
  block.ohem_thresh = 0.7
  block.ohem_min_kept = 100_000
  block.aux_weight = 0.4              # the auxiliary head's loss (model.aux_head=True)
  block.temperature = 0.5
  block.ks = (8, 16, 32)              # the k-NN graphs of the multi-scale density
  block.num_anchors = 200             # lowest-density pixels per class
  block.num_positives = 50            # highest-density pixels (and memory entries)
  block.num_negatives = 512
  block.max_pixels = 10_000           # pixels per class scored for density
  # True: class 0 takes no part in L_c, as the release on every dataset (its comment
  # means VOC's background; on Cityscapes it drops road). Default: every class.
  block.exclude_class_0 = False
  block.memory_size = 10_000          # entries per class
  block.memory_per_class = 1_000      # new entries per class and step (at most)
  block.classes_per_pass = 1          # classes computed at once (memory vs passes)
  return block


def phase_at(config, step: int) -> Phase:
  return Phase(semi=common.semi_started(config, step))


def check_config(config) -> list:
  block, problems = config.dgcl, []
  if config.model.projection_dim <= 0:
    problems.append("DGCL contrasts projections: set model.projection_dim > 0 (the "
                    "release: 256), as configs/dgcl/*.py and configs/demo.py:dgcl do")
  # dgcl.scope and dgcl.sup_loss are choices, the ranges numbers: ddfp_jax/config/check.py.
  needed = max(max(block.ks), block.num_positives)
  if block.memory_size < needed:
    problems.append(f"dgcl.memory_size ({block.memory_size}) must be at least {needed}, "
                    "the largest k of dgcl.ks and dgcl.num_positives: the density and the "
                    "positive key read that many entries")
  if block.memory_per_class > block.memory_size:
    problems.append(f"dgcl.memory_per_class ({block.memory_per_class}) must be at most "
                    f"dgcl.memory_size ({block.memory_size})")
  return problems


def contrast_config(config) -> dc.ContrastConfig:
  b = config.dgcl
  return dc.ContrastConfig(
      temperature=b.temperature, ks=tuple(b.ks), num_anchors=b.num_anchors,
      num_positives=b.num_positives, num_negatives=b.num_negatives,
      max_pixels=b.max_pixels, exclude_class_0=b.exclude_class_0,
      ignore_label=config.data.ignore_label, classes_per_pass=b.classes_per_pass)


def init_extra(config, rng, feature_dim: int):
  del rng
  return {"memory": class_memory.init(config.data.num_classes, config.dgcl.memory_size,
                                      feature_dim, config.model.projection_dim)}


def progress(config, step) -> jnp.ndarray:
  """p = (epoch - E0) / (E - E0) in [0, 1], constant within an epoch (traced step)."""
  e0 = config.schedule.sup_only_epochs
  epochs = config.total_steps / config.steps_per_epoch
  epoch = (step // config.steps_per_epoch).astype(jnp.float32)
  return jnp.clip((epoch - e0) / max(epochs - e0, 1e-6), 0.0, 1.0)


def make_pseudo_labels(tools):
  """The teacher's two label sets (module docstring, step 1): Teacher.pseudo holds the
  self-training labels, Teacher.extra the contrastive ones."""
  config, model = tools.config, tools.model
  ignore = config.data.ignore_label
  axis = tools.axis_name if config.dgcl.scope == "global" else None

  def teacher(state, batch, phase, rng) -> Teacher:
    del phase
    x_l, x_u = batch["labeled_image"], batch["unlabeled_weak"]
    train = config.semi.teacher_train_mode
    # In train mode the labeled images share the teacher's batch statistics (release);
    # in inference mode they change nothing and are left out.
    x = jnp.concatenate([x_l, x_u]) if train else x_u
    variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
    k_enc, k_feat = jax.random.split(rng)
    u, stats = tools.run(variables, x, train, k_enc, "encode")
    v, stats = tools.run({"params": state.teacher_params, "batch_stats": stats}, u, train,
                         k_feat, "features")
    logits_u = model.apply(variables, v, method="classify")[-x_u.shape[0]:]
    labels = dc.pseudo_labels(logits_u, batch["labeled_label"], batch["unlabeled_ignore"],
                              progress(config, state.step), ignore, axis)
    return Teacher(labels.self_training, labels.confidence, None, stats,
                   extra=labels.contrast)

  return teacher


def make_loss(tools):
  config, block = tools.config, tools.config.dgcl
  ignore, axis = config.data.ignore_label, tools.axis_name
  scoped_axis = axis if block.scope == "global" else None
  contrast = contrast_config(config)
  aux_head = config.model.aux_head

  def labeled_loss(logits, labels):
    return common.labeled_loss(tools, logits, labels, block.sup_loss, block.ohem_thresh,
                               block.ohem_min_kept, scoped_axis)

  def student(params, stats, x, keys):
    """(logits, aux logits or None, v, batch_stats) of the student in train mode."""
    variables = {"params": params, "batch_stats": stats}
    if aux_head:
      (u, aux), stats = tools.run(variables, x, True, keys[0], "encode_with_aux")
    else:
      (u, stats), aux = tools.run(variables, x, True, keys[0], "encode"), None
    v, stats = tools.run({"params": params, "batch_stats": stats}, u, True, keys[1],
                         "features", False)
    logits = tools.model.apply({"params": params, "batch_stats": stats}, v, method="classify")
    return logits, aux, v, stats

  def sup_loss(logits, aux, labels):
    sup = labeled_loss(logits, labels)
    if aux_head:
      sup = sup + block.aux_weight * labeled_loss(aux, labels)
    return sup

  def contrastive(rep, fts, labels, memory, key):
    """This device's share of L_c and of the number of classes used."""
    size = jax.lax.psum(1, axis)
    def compute(_):
      return dc.contrastive_loss(rep, fts, labels, memory, key, contrast)
    def skip(_):
      return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    loss, used = jax.lax.cond(class_memory.is_full(memory), compute, skip, None)
    return loss / size, used.astype(jnp.float32) / size

  def loss(params, inputs, rng):
    batch = inputs.batch
    k_encode, k_features, k_contrast = jax.random.split(rng, 3)
    if not inputs.phase.semi:
      logits, aux, _, stats = student(params, inputs.state.batch_stats,
                                      batch["labeled_image"], (k_encode, k_features))
      sup = sup_loss(logits, aux, batch["labeled_label"])
      return sup, (stats, {"loss_sup": sup})
    targets, teacher = inputs.targets, inputs.teacher
    n_l, n_u = batch["labeled_image"].shape[0], batch["unlabeled_weak"].shape[0]
    x = jnp.concatenate([batch["labeled_image"], batch["unlabeled_weak"], targets.image])
    logits, aux, v, stats = student(params, inputs.state.batch_stats, x,
                                    (k_encode, k_features))
    sup = sup_loss(logits[:n_l], None if aux is None else aux[:n_l], batch["labeled_label"])
    mixed = resize_bilinear(logits[n_l + n_u:], targets.label.shape[1:3])
    unsup = valid_fraction_weighted_ce(mixed, targets.label, ignore, axis)
    rep, stats = tools.run({"params": params, "batch_stats": stats}, v[:n_l + n_u], True,
                           k_features, "project")
    fts = jax.lax.stop_gradient(v[:n_l + n_u])
    labels = teacher.extra
    memory = inputs.state.extra["memory"]
    if block.scope == "global":
      # Every device scores the whole batch with the same key; the all_gather's transpose
      # sums each copy's gradient back to the device that holds the pixels.
      key = common.shared_key(inputs.state, 0)
      contrast_loss, used = contrastive(common.gather_in_order(rep, n_l, axis),
                                        common.gather_in_order(fts, n_l, axis),
                                        common.gather_in_order(labels, n_l, axis), memory, key)
    else:
      contrast_loss, used = contrastive(rep, fts, labels, memory, k_contrast)
    s = block.contrast_grad_scale
    scaled = s * contrast_loss + (1.0 - s) * jax.lax.stop_gradient(contrast_loss)
    total = sup + config.semi.lambda_image * unsup + block.lambda_contrast * scaled
    outputs = {"fts": fts, "rep": jax.lax.stop_gradient(rep), "labels": labels}
    return total, (stats, {"loss_sup": sup, "loss_image": unsup,
                           "loss_contrast": contrast_loss, "contrast_classes": used},
                   outputs)
  return loss


def make_memory_update(tools):
  """The memory after the step's pixels of every device (module docstring, step 4)."""
  config, block, axis = tools.config, tools.config.dgcl, tools.axis_name

  def update(extra, inputs, rng):
    del rng   # the memory is the same on every device: its key is too
    if not inputs.phase.semi:
      return extra, {}
    out = inputs.outputs
    n_l = inputs.batch["labeled_image"].shape[0]
    gathered = {k: common.gather_in_order(x, n_l, axis) for k, x in out.items()}
    memory = class_memory.update(extra["memory"], gathered["fts"], gathered["rep"],
                                 gathered["labels"], common.shared_key(inputs.state, 1),
                                 block.memory_per_class, tuple(block.ks),
                                 block.classes_per_pass)
    fill = jnp.mean(memory["count"] / block.memory_size)
    return {"memory": memory}, {"memory_fill": fill}
  return update


METHOD = Method(
    config_block=config_block,
    phase_at=phase_at,
    make_loss=make_loss,
    init_extra=init_extra,
    make_extra_update=make_memory_update,
    make_pseudo_labels=make_pseudo_labels,
    check_config=check_config,
)
