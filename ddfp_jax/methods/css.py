"""`css`: collaborative logit- and representation-space supervision (Wang et al., ICCV
2023, "Space Engage"), the spec's ../shared css-algorithm.md sections 1-4.

The model has a representation head parallel to the classifier (`model.projection_dim`
256 on `model.projection_on = "decoder_input"`, with `model.decoder = "reco"`), and the
method keeps K class prototypes (K, D) in its extra state, identical on every device.
One semi-supervised step (there is no supervised warm-up: `schedule.sup_only_epochs = 0`,
the EMA teacher labels from step 0):
1. teacher (`semi.teacher_train_mode`; the release: train mode) on [labeled, weak]:
   logit-space labels y_cls with confidence c_cls (softmax of the upsampled logits) and
   representation-space labels y_rep with c_rep (softmax at `css.temperature` of the
   cosine similarities to the prototypes, upsampled to the crop); `variant = "mix"`
   keeps y_cls where y_cls = y_rep and ignores the rest, `"cross"` carries both;
2. the strong view built on the device from the weak one with the labels and both
   confidences (`training/strong_view.py`: rescale, crop, CutMix with p = 1, colour,
   blur, flip); `css.quantize_confidence` rounds the confidences to 8 bits first, as the
   release's PIL round trip does;
3. the student on the labeled images and on the strong view (two forward passes, as the
   release): L = L_s + L_u + lambda_c(e) L_c with L_s CE or OHEM; L_u on the mixed labels
   (mix) or, for cross, on y_cls before `cross_warmup_epochs` and on y_rep with c_rep
   after; L_c the prototype contrastive loss (`prototypes.contrastive_loss`) of the
   student's representations of [labeled, strong]; lambda_c(e) = lambda_contrast
   exp(-5 (e / 200)^2), 0 after epoch 200, e counted in `rampdown_steps_per_epoch` steps;
4. the prototypes move by EMA (0.99; the first update copies the mean) towards the mean
   representation of each class's valid pixels, summed over every device.

Paper and release differ (spec section 7); the default is the paper, the release a
switch (configs/css/*.py `:release`):
- `prototype_source`: "teacher" (the teacher's representations of [labeled, weak], P:Eq.
  2) | "student" (the student's of [labeled, strong], release);
- `valid_by`: which unlabeled pixels L_c and the prototypes use: "representation"
  (c_rep > delta_w, P:Sec. 3.4) | "logit" (c_cls >= delta_w, release);
- `unsup_loss`: "threshold" (CE on pixels with confidence > delta_u, averaged over the
  pseudo-labelled pixels, P:Eq. 8) | "reco" (every pseudo-labelled pixel, weighted by its
  image's share of confident pixels, release);
- `indicator_prototypes`: the prototypes of the hard-anchor indicator Q: "updated"
  (this step's, P:Eq. 5) | "previous" (before this step's update, release).
`scope`: "global" (default) draws L_c's anchors and negatives from the whole batch of all
devices, so a run does not depend on how its batch is split; "device" per device, as
the release. The prototypes are summed over devices in both (the release lets each GPU's
copy drift: it skips classes absent on that GPU).
"""
import jax
import jax.numpy as jnp
import ml_collections

from ddfp_jax.methods import common
from ddfp_jax.methods import prototypes as pt
from ddfp_jax.methods.interface import Method, Phase, Targets, Teacher
from ddfp_jax.models.resize import resize_bilinear, resize_nearest
from ddfp_jax.training import strong_view as sv
from ddfp_jax.training.losses import cross_entropy_sum, global_mean

VARIANTS = ("mix", "cross")
SCOPES = ("global", "device")
PROTOTYPE_SOURCES = ("teacher", "student")
VALID_BY = ("representation", "logit")
UNSUP_LOSSES = ("threshold", "reco")
INDICATOR_PROTOTYPES = ("updated", "previous")


def config_block() -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict()
  block.variant = "mix"               # "mix" | "cross" (module docstring)
  block.temperature = 0.5             # tau_s: representation labels and indicator Q
  block.contrast_temperature = 0.5    # tau of L_c and of the negative-class draw
  block.num_queries = 256             # anchors per class
  block.num_negatives = 512           # negatives per anchor
  block.hard_threshold = 0.8          # delta_s: anchors are pixels with Q_c below it
  block.weak_threshold = 0.7          # delta_w: unlabeled pixels valid for L_c
  block.unsup_threshold = 0.97        # delta_u of L_u
  block.prototype_momentum = 0.99     # alpha_p
  block.lambda_contrast = 1.0
  block.rampdown_epochs = 200
  block.rampdown_scale = 5.0
  # Steps per epoch of the ramp-down and the cross warm-up (the release: one pass of its
  # labeled loader, N_l / (B W) steps; ReCo: 200); 0: config.steps_per_epoch.
  block.rampdown_steps_per_epoch = 0
  block.cross_warmup_epochs = 20      # cross: epochs of y_cls targets (paper 20, release 0)
  block.prototype_source = "teacher"  # "teacher" (paper) | "student" (release)
  block.valid_by = "representation"   # "representation" (paper) | "logit" (release)
  block.unsup_loss = "threshold"      # "threshold" (paper) | "reco" (release)
  block.indicator_prototypes = "updated"   # "updated" (paper) | "previous" (release)
  block.scope = "global"              # "global" | "device" (release)
  block.sup_loss = "ce"               # "ce" (VOC) | "ohem" (Cityscapes)
  block.ohem_thresh = 0.7
  block.ohem_min_kept = 200_000       # the release: 50 000 per image of its 4 per GPU
  block.quantize_confidence = False   # the release's 8-bit confidences (PIL round trip)
  block.strong = strong = ml_collections.ConfigDict()
  strong.scale_range = (0.5, 1.5)     # Cityscapes: (0.5, 2.0)
  strong.cutmix_prob = 1.0
  strong.color_prob = 0.8
  strong.brightness = 0.25
  strong.contrast = 0.25
  strong.saturation = 0.25
  strong.hue = 0.25
  strong.blur_prob = 0.5
  strong.blur_sigma = (0.15, 1.15)
  strong.flip_prob = 0.5
  return block


def phase_at(config, step: int) -> Phase:
  return Phase(semi=common.semi_started(config, step))


def check_config(config) -> list:
  problems = []
  if config.model.projection_dim <= 0:
    problems.append("CSS compares representations with class prototypes: set "
                    "model.projection_dim > 0 (the release: 256, on "
                    "model.projection_on='decoder_input'), as configs/css/*.py and "
                    "configs/demo.py:css do")
  lo, hi = config.css.strong.scale_range
  if not 0 < lo <= hi:
    problems.append(f"css.strong.scale_range {tuple(config.css.strong.scale_range)} must "
                    "be (lo, hi) with 0 < lo <= hi")
  return problems


def init_extra(config, rng, feature_dim: int):
  del rng, feature_dim
  return {"prototypes": jnp.zeros((config.data.num_classes, config.model.projection_dim),
                                  jnp.float32)}


def strong_view_config(config) -> sv.StrongViewConfig:
  s = config.css.strong
  return sv.StrongViewConfig(
      scale_range=tuple(s.scale_range), cutmix_prob=s.cutmix_prob, color_prob=s.color_prob,
      brightness=s.brightness, contrast=s.contrast, saturation=s.saturation, hue=s.hue,
      blur_prob=s.blur_prob, blur_sigma=tuple(s.blur_sigma), flip_prob=s.flip_prob,
      mean=tuple(config.data.mean), std=tuple(config.data.std))


def represent(tools, variables, u, v, train, rng):
  """(representations, batch_stats) of the representation head on u (or v, by
  `model.projection_on`)."""
  x = u if tools.config.model.projection_on == "decoder_input" else v
  return tools.run(variables, x, train, rng, "project")


def make_pseudo_labels(tools):
  """Module docstring, step 1: Teacher.pseudo holds the labels L_u starts from (mix:
  the agreeing labels; cross: y_cls), Teacher.extra both spaces' labels, c_rep and the
  teacher's representations at the feature grid."""
  config, block, model = tools.config, tools.config.css, tools.model
  ignore = config.data.ignore_label

  def teacher(state, batch, phase, rng) -> Teacher:
    del phase
    x_l, x_u = batch["labeled_image"], batch["unlabeled_weak"]
    n_l = x_l.shape[0]
    train = config.semi.teacher_train_mode
    variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
    k_enc, k_feat, k_rep = jax.random.split(rng, 3)
    x = jnp.concatenate([x_l, x_u])
    u, stats = tools.run(variables, x, train, k_enc, "encode")
    variables = {"params": state.teacher_params, "batch_stats": stats}
    v, stats = tools.run(variables, u, train, k_feat, "features")
    logits_u = model.apply(variables, v[n_l:], method="classify")
    rep, stats = represent(tools, {"params": state.teacher_params, "batch_stats": stats}, u,
                           v, train, k_rep)
    size = x_u.shape[1:3]
    padded = batch["unlabeled_ignore"] == ignore
    probs = jax.nn.softmax(resize_bilinear(logits_u, size), axis=-1)
    similarity = pt.prototype_similarity(rep[n_l:], state.extra["prototypes"])
    probs_rep = jax.nn.softmax(resize_bilinear(similarity, size) / block.temperature, axis=-1)
    label = lambda p: jnp.where(padded, ignore, jnp.argmax(p, -1).astype(jnp.int32))
    cls_label, rep_label = label(probs), label(probs_rep)
    pseudo = pt.mix_labels(cls_label, rep_label, ignore) if block.variant == "mix" else cls_label
    extra = {"cls_label": cls_label, "rep_label": rep_label,
             "rep_confidence": jnp.max(probs_rep, -1), "rep": rep}
    return Teacher(pseudo, jnp.max(probs, -1), None, stats,
                   extra=jax.lax.stop_gradient(extra))

  return teacher


def make_targets(tools):
  """Module docstring, step 2: the strong view of the weak one, with every map."""
  config, block = tools.config, tools.config.css
  ignore = config.data.ignore_label
  view = strong_view_config(config)

  def targets(batch, teacher: Teacher, rng) -> Targets:
    # "label" is y_cls for cross (Teacher.pseudo), the mixed labels for mix.
    maps = {"label": teacher.pseudo, "rep_label": teacher.extra["rep_label"],
            "confidence": teacher.confidence,
            "rep_confidence": teacher.extra["rep_confidence"],
            "ignore": batch["unlabeled_ignore"]}
    if block.quantize_confidence:
      for k in ("confidence", "rep_confidence"):
        maps[k] = jnp.round(maps[k] * 255.0) / 255.0
    fill = {k: (0.0 if "confidence" in k else ignore) for k in maps}
    image, maps = sv.strong_view(rng, batch["unlabeled_weak"], maps, fill, view)
    padded = maps.pop("ignore") == ignore
    maps = {k: jnp.where(padded, ignore, m) if "label" in k else m for k, m in maps.items()}
    return Targets(image, maps["label"], extra=maps)

  return targets


def css_epoch(config, step):
  """The epoch of the ramp-down and of the cross variant's warm-up (a traced step)."""
  return step // (config.css.rampdown_steps_per_epoch or config.steps_per_epoch)


def rampdown_weight(config, step):
  block = config.css
  return block.lambda_contrast * pt.rampdown(css_epoch(config, step), block.rampdown_epochs,
                                             block.rampdown_scale)


def make_loss(tools):
  config, block = tools.config, tools.config.css
  ignore, axis = config.data.ignore_label, tools.axis_name
  scoped_axis = axis if block.scope == "global" else None
  settings = pt.ContrastSettings(block.num_queries, block.num_negatives,
                                 block.contrast_temperature)

  def student(params, stats, x, keys):
    """(logits, representations, batch_stats) of one train-mode forward pass."""
    variables = {"params": params, "batch_stats": stats}
    u, stats = tools.run(variables, x, True, keys[0], "encode")
    v, stats = tools.run({"params": params, "batch_stats": stats}, u, True, keys[1],
                         "features", False)
    variables = {"params": params, "batch_stats": stats}
    logits = tools.model.apply(variables, v, method="classify")
    rep, stats = represent(tools, variables, u, v, True, keys[2])
    return logits, rep, stats

  def sup_loss(logits, labels):
    return common.labeled_loss(tools, logits, labels, block.sup_loss, block.ohem_thresh,
                               block.ohem_min_kept, scoped_axis)

  def unsup_loss(logits, labels, confidence):
    logits = resize_bilinear(logits, labels.shape[1:3])
    if block.unsup_loss == "reco":
      total, count = pt.reco_weighted_ce_sum(logits, labels, confidence,
                                             block.unsup_threshold, ignore)
    else:
      kept = jnp.where(confidence > block.unsup_threshold, labels, ignore)
      total, _ = cross_entropy_sum(logits, kept, ignore)
      count = jnp.sum(labels != ignore).astype(jnp.float32)
    return global_mean(total, count, axis)

  def contrast_valid(labels, confidence, rep_confidence):
    if block.valid_by == "logit":
      return (labels != ignore) & (confidence >= block.weak_threshold)
    return (labels != ignore) & (rep_confidence > block.weak_threshold)

  def loss(params, inputs, rng):
    batch, state = inputs.batch, inputs.state
    keys = jax.random.split(rng, 7)
    if not inputs.phase.semi:
      return common.supervised_loss(tools, params, inputs, rng)
    targets, teacher = inputs.targets, inputs.teacher
    maps = targets.extra
    logits_l, rep_l, stats = student(params, state.batch_stats, batch["labeled_image"],
                                     keys[:3])
    logits_s, rep_s, stats = student(params, stats, targets.image, keys[3:6])
    sup = sup_loss(logits_l, batch["labeled_label"])

    if block.variant == "cross":
      after = css_epoch(config, state.step) >= block.cross_warmup_epochs
      u_labels = jnp.where(after, maps["rep_label"], maps["label"])
      u_confidence = jnp.where(after, maps["rep_confidence"], maps["confidence"])
    else:
      u_labels, u_confidence = maps["label"], maps["confidence"]
    unsup = unsup_loss(logits_s, u_labels, u_confidence)

    # L_c over [labeled, strong] at the feature grid.
    size = rep_l.shape[1:3]
    grid = lambda x: resize_nearest(x, size)
    y_l = grid(batch["labeled_label"].astype(jnp.int32))
    y_s = grid(maps["label"])
    valid_s = contrast_valid(y_s, grid(maps["confidence"]), grid(maps["rep_confidence"]))
    rep = jnp.concatenate([rep_l, rep_s])
    labels = jnp.concatenate([y_l, y_s])
    valid = jnp.concatenate([y_l != ignore, valid_s])
    previous = state.extra["prototypes"]
    if block.prototype_source == "teacher":
      # The teacher's [labeled, weak] at the same grid, its L_c labels (Teacher.pseudo).
      t_unlabeled = grid(teacher.pseudo)
      t_labels = jnp.concatenate([y_l, t_unlabeled])
      t_valid = jnp.concatenate([
          y_l != ignore,
          contrast_valid(t_unlabeled, grid(teacher.confidence),
                         grid(teacher.extra["rep_confidence"]))])
      updated = pt.update_prototypes(previous, teacher.extra["rep"], t_labels, t_valid,
                                     block.prototype_momentum, axis)
    else:
      updated = pt.update_prototypes(previous, jax.lax.stop_gradient(rep), labels, valid,
                                     block.prototype_momentum, axis)
    indicator = updated if block.indicator_prototypes == "updated" else previous
    q = jax.nn.softmax(pt.prototype_similarity(jax.lax.stop_gradient(rep), indicator)
                       / block.temperature, axis=-1)
    q_own = jnp.take_along_axis(q, jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
    hard = q_own < block.hard_threshold
    flat = lambda x: x.reshape((-1,) + x.shape[3:])
    pixels = (rep, labels, valid, hard)
    if block.scope == "global":
      # Every device draws from the whole batch with the same key; the all_gather's
      # transpose sums each copy's gradient back to the device that holds the pixels.
      pixels = [common.gather_in_order(x, rep_l.shape[0], axis) for x in pixels]
      key = common.shared_key(state, 2)
    else:
      key = keys[6]
    contrast, n_classes = pt.contrastive_loss(*map(flat, pixels), updated, key, settings)
    # This device's share: the mean over devices (global: every device holds the loss).
    devices = jax.lax.psum(1, axis)
    contrast, n_classes = contrast / devices, n_classes.astype(jnp.float32) / devices
    weight = rampdown_weight(config, state.step)
    total = sup + unsup + weight * contrast
    metrics = {"loss_sup": sup, "loss_image": unsup, "loss_contrast": contrast,
               "contrast_classes": n_classes,
               "contrast_weight": weight / devices,
               "hard_fraction": global_mean(jnp.sum(hard & valid).astype(jnp.float32),
                                            jnp.sum(valid).astype(jnp.float32), axis)}
    return total, (stats, metrics, {"prototypes": updated})

  return loss


def make_prototype_update(tools):
  """Module docstring, step 4: the prototypes the loss computed (the same on every
  device), kept."""
  del tools

  def update(extra, inputs, rng):
    del rng
    if not inputs.phase.semi:
      return extra, {}
    prototypes = inputs.outputs["prototypes"]
    present = jnp.mean(jnp.any(prototypes != 0, axis=-1).astype(jnp.float32))
    return {"prototypes": prototypes}, {"prototypes_initialised": present}
  return update


METHOD = Method(
    config_block=config_block,
    phase_at=phase_at,
    make_loss=make_loss,
    init_extra=init_extra,
    make_extra_update=make_prototype_update,
    make_pseudo_labels=make_pseudo_labels,
    make_targets=make_targets,
    check_config=check_config,
)
