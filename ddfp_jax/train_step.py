"""One DDFP training step, written per device with a named axis.

`make_train_step(config)` returns `step(state, batch, phase) -> (state, metrics)`. It is
written once for one device; `pmap_train_step` runs it under `jax.pmap` over the local
devices (state unmapped, batch mapped), and the same function runs under
`jax.shard_map` + `jit` since it only uses `axis_name` collectives.

A step after the warm-up does, in one compiled call (spec section 3):
  1. teacher forward on the weak unlabeled view (+ labeled images when the flow trains or
     the teacher runs in train mode), thresholded pseudo labels;
  2. CutMix of the strong view, pseudo labels and ignore masks;
  3. student forward on [labeled, strong] up to the classifier input u;
  4. the configured perturbation of the unlabeled u (or v, the paper's site);
  5. the classifier on clean (main BN) and perturbed (auxiliary BN) inputs, three losses;
  6. the student update: gradients summed over devices (each device's loss is its share
     of the global mean, see `losses.py`), cross-replica BatchNorm statistics;
  7. the flow's likelihood update on sampled, noised teacher features;
  8. the teacher's EMA update.

Phases (`Phase`) are static: each distinct phase compiles once; the trainer switches
phase at epoch boundaries. A step whose loss or gradient norm is not finite leaves the
state untouched and reports `nonfinite = 1`, so the caller can stop with the last good
state and checkpoints intact.
"""
import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddfp_jax import builders, optim
from ddfp_jax.cutmix import cutmix
from ddfp_jax.density import UNLABELED, sample_pixels
from ddfp_jax.losses import cross_entropy_sum, global_mean
from ddfp_jax.perturbations import PerturbationSite, perturb
from ddfp_jax.resize import resize_bilinear, resize_nearest
from ddfp_jax.state import TrainState, global_labeled_batch

AXIS = "batch"
Batch = Dict[str, jnp.ndarray]


class Phase(NamedTuple):
  """What a step computes; static, so each distinct phase compiles once."""
  semi: bool        # pseudo labels and consistency on the strong view
  train_flow: bool  # the flow's likelihood update
  perturb: bool     # the perturbed-feature branch


def phase_at(config: ml_collections.ConfigDict, step: int) -> Phase:
  """The phase of global step `step` (a Python int): warm-up, flow, perturbation."""
  epoch = step // config.steps_per_epoch
  kind = config.ddfp.perturbation
  semi = bool(config.ddfp.semi_supervised) and epoch >= config.schedule.sup_only_epochs
  flow_needed = kind == "density_descending" or config.train.eval_flow
  flow_start = max(config.schedule.flow_start_epoch, config.schedule.sup_only_epochs)
  train_flow = semi and flow_needed and epoch >= flow_start
  # The release perturbs from the epoch after the flow starts, so the density it descends
  # has had an epoch to fit; the baselines follow the same schedule.
  perturbing = semi and kind != "none" and epoch >= flow_start + 1
  return Phase(semi, train_flow, perturbing)


def ema_decay(config: ml_collections.ConfigDict, step: jnp.ndarray) -> jnp.ndarray:
  """d = min(1 - 1/(t - t0 + 1), m): 0 at the first semi-supervised step t0 (the teacher
  becomes the student), then towards m. 0 throughout for the release's shared teacher."""
  if config.ddfp.teacher == "shared":
    return jnp.zeros((), jnp.float32)
  t0 = config.schedule.sup_only_epochs * config.steps_per_epoch
  since = jnp.maximum(step - t0 + 1, 1).astype(jnp.float32)
  return jnp.minimum(1.0 - 1.0 / since, config.ddfp.ema_decay)


def _psum_tree(tree):
  return jax.tree.map(lambda x: jax.lax.psum(x, AXIS), tree)


def make_train_step(config: ml_collections.ConfigDict):
  """Builds the per-device step for `config` (see the module docstring)."""
  if config.ddfp.teacher not in ("ema", "shared"):
    raise ValueError(f"ddfp.teacher must be 'ema' or 'shared', got {config.ddfp.teacher!r}.")
  model = builders.build_model(config, axis_name=AXIS)
  density = builders.build_density(config)
  perturbation = builders.build_perturbation(config)
  tx = optim.student_optimizer(config, global_labeled_batch(config))
  flow_tx = optim.flow_optimizer(config)
  flow_lr = optim.flow_schedule(config)
  student_lr = optim.student_schedule(config, global_labeled_batch(config))  # backbone
  ignore = config.data.ignore_label
  ddfp = config.ddfp
  flow_cfg = config.flow

  def run(variables, x, train, rng, method, *args):
    """model.apply with BatchNorm statistics threaded through (train mode only)."""
    if not train:
      return model.apply(variables, x, False, *args, method=method), variables["batch_stats"]
    out, updates = model.apply(variables, x, True, *args, method=method,
                               mutable=["batch_stats"], rngs={"dropout": rng})
    return out, updates["batch_stats"]

  def teacher_forward(state, batch, phase, rng):
    x_u = batch["unlabeled_weak"]
    n_l = batch["labeled_image"].shape[0]
    train = ddfp.teacher_train_mode
    # Labeled images go through the teacher only when their features feed the flow, or
    # when (train mode) they take part in the teacher's batch statistics as in the release.
    with_labeled = phase.train_flow or train
    x = jnp.concatenate([batch["labeled_image"], x_u]) if with_labeled else x_u
    variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
    k_enc, k_feat = jax.random.split(rng)
    u, stats = run(variables, x, train, k_enc, "encode")
    v, stats = run({"params": state.teacher_params, "batch_stats": stats}, u, train, k_feat,
                   "features")
    logits = model.apply(variables, v, method="classify")
    logits_u = logits[n_l:] if with_labeled else logits
    probs = jax.nn.softmax(resize_bilinear(logits_u, x_u.shape[1:3]), axis=-1)
    confidence = jnp.max(probs, axis=-1)
    pseudo = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    keep = (confidence > ddfp.threshold) & (batch["unlabeled_ignore"] != ignore)
    pseudo = jnp.where(keep, pseudo, ignore)
    features = jax.lax.stop_gradient(v) if with_labeled else None
    return jax.lax.stop_gradient(pseudo), confidence, features, stats

  def student_loss(params, state, batch, phase, targets, rngs):
    """Total loss (this device's share of the global mean) and its parts."""
    x_l, y_l = batch["labeled_image"], batch["labeled_label"]
    n_l = x_l.shape[0]
    label_hw = y_l.shape[1:3]
    variables = {"params": params, "batch_stats": state.batch_stats}

    def ce(logits, labels):
      return global_mean(*cross_entropy_sum(resize_bilinear(logits, label_hw), labels, ignore),
                         AXIS)

    if not phase.semi:
      logits, stats = run(variables, x_l, True, rngs["encode"], None)
      sup = ce(logits, y_l)
      return sup, (stats, {"loss_sup": sup})

    x_s, pseudo_s = targets
    u, stats = run(variables, jnp.concatenate([x_l, x_s]), True, rngs["encode"], "encode")
    v, stats = run({"params": params, "batch_stats": stats}, u, True, rngs["clean"],
                   "features", False)
    logits = model.apply(variables, v, method="classify")
    sup = ce(logits[:n_l], y_l)
    image = ce(logits[n_l:], pseudo_s)
    parts = {"loss_sup": sup, "loss_image": image}
    if not phase.perturb:
      loss = sup + (ddfp.lambda_image + ddfp.lambda_feature) * image
      return loss, (stats, parts)

    frozen = jax.lax.stop_gradient(params)
    frozen_vars = {"params": frozen, "batch_stats": stats}
    confident = resize_nearest(pseudo_s, v.shape[1:3]) != ignore
    log_density = lambda f: density.apply(state.flow_params, f, method="log_prob")
    to_logits = lambda f: model.apply(frozen_vars, f, method="classify")
    if ddfp.site == "classifier_input":
      # The release's attack runs the classifier block in train mode with the auxiliary BN;
      # its statistics updates are discarded here (the release applies them twice).
      to_features = lambda x: run(frozen_vars, x, True, rngs["attack"], "features", True)[0]
      site = PerturbationSite(to_features, to_logits, log_density, confident, AXIS)
      u_perturbed = perturb(u[n_l:], site, perturbation, rngs["perturb"])
      v_perturbed, stats = run({"params": params, "batch_stats": stats}, u_perturbed, True,
                               rngs["perturbed"], "features", True)
    else:
      site = PerturbationSite(lambda f: f, to_logits, log_density, confident, AXIS)
      v_perturbed = perturb(v[n_l:], site, perturbation, rngs["perturb"])
    feature = ce(model.apply(variables, v_perturbed, method="classify"), pseudo_s)
    parts["loss_feature"] = feature
    loss = sup + ddfp.lambda_image * image + ddfp.lambda_feature * feature
    return loss, (stats, parts)

  def flow_update(state, batch, teacher_features, rng):
    """Adam step of the flow on up to `num_samples` noised teacher features per device."""
    grid = teacher_features.shape[1:3]
    labeled = resize_nearest(batch["labeled_label"], grid)
    padded = resize_nearest(batch["unlabeled_ignore"], grid) == ignore
    # Pseudo labels are not used by the flow: every real unlabeled pixel is "unlabeled".
    unlabeled = jnp.where(padded, ignore, UNLABELED)
    labels = jnp.concatenate([labeled, unlabeled]).reshape(-1)
    feats = teacher_features.reshape(-1, teacher_features.shape[-1]).astype(jnp.float32)
    valid = (labels != ignore) & ((labels == UNLABELED) | (labels < config.data.num_classes))
    k_sample, k_noise = jax.random.split(rng)
    index, picked = sample_pixels(k_sample, valid, flow_cfg.num_samples)
    sample = feats[index] + flow_cfg.noise_std * jax.random.normal(
        k_noise, (index.shape[0], feats.shape[-1]))
    sample_labels = labels[index]
    count = jax.lax.psum(jnp.sum(picked.astype(jnp.float32)), AXIS)

    def nll(flow_params):
      # density.nll is the local mean; rescale to this device's share of the global mean.
      local = density.apply(flow_params, sample, sample_labels, picked, method="nll")
      return local * jnp.sum(picked.astype(jnp.float32)) / jnp.maximum(count, 1.0)

    loss, grads = jax.value_and_grad(nll)(state.flow_params)
    loss, grads = jax.lax.psum(loss, AXIS), _psum_tree(grads)
    direction, flow_opt_state = flow_tx.update(grads, state.flow_opt_state, state.flow_params)
    lr = flow_lr(state.step)
    flow_params = jax.tree.map(lambda p, d: p + lr * d, state.flow_params, direction)
    return flow_params, flow_opt_state, {"loss_flow": loss, "flow_grad_norm":
                                         optax.global_norm(grads), "flow_lr": lr}

  def step(state: TrainState, batch: Batch, phase: Phase) -> Tuple[TrainState, Dict[str, Any]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    names = ("teacher", "cutmix", "encode", "clean", "attack", "perturb", "perturbed", "flow")
    keys = dict(zip(names, jax.random.split(key, len(names))))
    metrics = {}

    targets = None
    teacher_features, teacher_stats = None, state.teacher_batch_stats
    if phase.semi:
      pseudo, confidence, teacher_features, teacher_stats = teacher_forward(
          state, batch, phase, keys["teacher"])
      x_s, pseudo_s, ignore_s = cutmix(keys["cutmix"], ddfp.cutmix_prob,
                                       batch["unlabeled_strong"], pseudo,
                                       batch["unlabeled_ignore"])
      pseudo_s = jnp.where(ignore_s == ignore, ignore, pseudo_s)
      targets = (x_s, pseudo_s)
      real = batch["unlabeled_ignore"] != ignore
      real_count = jnp.sum(real.astype(jnp.float32))
      shares = {
          "confident_fraction": global_mean(jnp.sum((pseudo != ignore).astype(jnp.float32)),
                                            real_count, AXIS),
          "teacher_confidence": global_mean(jnp.sum(jnp.where(real, confidence, 0.0)),
                                            real_count, AXIS),
      }
      metrics.update({k: jax.lax.psum(v, AXIS) for k, v in shares.items()})

    grad_fn = jax.value_and_grad(student_loss, has_aux=True)
    (loss, (batch_stats, parts)), grads = grad_fn(state.params, state, batch, phase, targets,
                                                  keys)
    loss = jax.lax.psum(loss, AXIS)
    grads = _psum_tree(grads)
    metrics.update({k: jax.lax.psum(v, AXIS) for k, v in parts.items()})
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    flow_params, flow_opt_state = state.flow_params, state.flow_opt_state
    if phase.train_flow:
      flow_params, flow_opt_state, flow_metrics = flow_update(state, batch, teacher_features,
                                                              keys["flow"])
      metrics.update(flow_metrics)

    decay = ema_decay(config, state.step) if phase.semi else jnp.zeros((), jnp.float32)
    ema = lambda t, s: decay * t + (1.0 - decay) * s
    teacher_params = jax.tree.map(ema, state.teacher_params, params)
    if ddfp.teacher_train_mode and phase.semi:
      # Release: the teacher's BN buffers come from its own train-mode forward passes.
      teacher_batch_stats = teacher_stats
    else:
      teacher_batch_stats = jax.tree.map(ema, state.teacher_batch_stats, batch_stats)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for name in ("loss_flow", "flow_grad_norm"):
      if name in metrics:
        finite = finite & jnp.isfinite(metrics[name])
    metrics.update(loss=loss, grad_norm=grad_norm, ema_decay=decay,
                   learning_rate=student_lr(state.step),
                   nonfinite=1 - finite.astype(jnp.int32))
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats,
        teacher_params=teacher_params, teacher_batch_stats=teacher_batch_stats,
        opt_state=opt_state, flow_params=flow_params, flow_opt_state=flow_opt_state)
    # Keep the last good state on a non-finite step: nothing already trained is lost.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, metrics

  return step


def run_phases(config: ml_collections.ConfigDict) -> Tuple[Phase, ...]:
  """The distinct phases a run of `config` goes through, in order."""
  phases = []
  for epoch in range(-(-config.total_steps // config.steps_per_epoch)):
    phase = phase_at(config, epoch * config.steps_per_epoch)
    if phase not in phases:
      phases.append(phase)
  return tuple(phases)


def replicate(tree, devices: Optional[Sequence[jax.Device]] = None):
  """Places `tree` on every device the way pmap returns unmapped outputs, so the first
  step does not compile a second program for a differently placed input."""
  devices = jax.local_devices() if devices is None else devices
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


class RetraceError(AssertionError):
  """The step was traced (and so compiled) more often than it has phases."""


def limit_traces(fn, n: int):
  """Wraps `fn` so that tracing it more than `n` times raises RetraceError.

  The wrapper's body only runs while JAX traces, so it counts compilations of this one
  instance (chex.assert_max_traces counts per function name across instances, which trips
  when a process builds several trainers).
  """
  traces = 0

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    nonlocal traces
    traces += 1
    if traces > n:
      raise RetraceError(
          f"The train step was traced {traces} times but the run has {n} phase(s): "
          "something changes shape, dtype or placement between steps (e.g. a last batch "
          "of another size), and every step would recompile.")
    return fn(*args, **kwargs)

  return wrapped


def pmap_train_step(config: ml_collections.ConfigDict,
                    devices: Optional[Sequence[jax.Device]] = None,
                    max_traces: Optional[int] = None):
  """`jax.pmap` of the per-device step: state unmapped (and returned unmapped), batch
  mapped over the devices.

  Each distinct `Phase` compiles once; a further trace (a shape, dtype or placement that
  changes between steps) raises instead of silently recompiling. `max_traces` defaults to
  the number of phases of the run.
  """
  n = len(run_phases(config)) if max_traces is None else max_traces
  step = limit_traces(make_train_step(config), n)
  return jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, None), out_axes=(None, None),
                  static_broadcasted_argnums=(2,), devices=devices)
