"""The shared train step, written once per device with a named axis, for every method.

`make_train_step(config)` returns `step(state, batch, phase) -> (state, metrics)` for the
method `config.method` (`ddfp_jax/methods/`). It is written for one device;
`pmap_train_step` runs it under `jax.pmap` over the local devices (state unmapped, batch
mapped), and the same function runs under `jax.shard_map` + `jit` since it only uses
`axis_name` collectives.

One step, in one compiled call:
  1. semi-supervised phases: the teacher on the weak unlabeled view (+ the labeled images
     when the method wants the teacher's features or the teacher runs in train mode),
     thresholded pseudo labels; CutMix of the strong view, pseudo labels and padding;
  2. the method's loss and its gradient, summed over devices (each device's loss is its
     share of the global mean, see `losses.py`), cross-replica BatchNorm statistics;
  3. the student's optimiser;
  4. the method's update of its extra state (e.g. DDFP's flow);
  5. the teacher's EMA update.

Phases are the method's, static: each distinct phase compiles once; the trainer asks
`phase_at` for the phase of every step. A step whose loss, gradient norm or an extra-update
metric is not finite leaves the state untouched and reports `nonfinite = 1`, so the caller
can stop with the last good state and checkpoints intact.
"""
import functools
from typing import Any, Dict, Hashable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddfp_jax.methods import get_method
from ddfp_jax.methods.interface import StepInputs, Targets, Teacher, Tools
from ddfp_jax.models import builders
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.training import optim
from ddfp_jax.training.cutmix import cutmix
from ddfp_jax.training.losses import cross_entropy_sum, global_mean
from ddfp_jax.training.state import TrainState

AXIS = "batch"
Batch = Dict[str, jnp.ndarray]
# "ema": an EMA from the first semi-supervised step (paper); "shared": the teacher is the
# student throughout (DDFP's release); "shared_first_epoch": the student during the
# first semi-supervised epoch, a true EMA after (DGCL's release).
TEACHERS = ("ema", "shared", "shared_first_epoch")


def phase_at(config: ml_collections.ConfigDict, step: int) -> Hashable:
  """The phase of global step `step` (a Python int) of `config.method`."""
  return get_method(config.method).phase_at(config, step)


def ema_decay(config: ml_collections.ConfigDict, step: jnp.ndarray) -> jnp.ndarray:
  """d = min(1 - 1/(t - t0 + 1), m): 0 at the first semi-supervised step t0 (the teacher
  becomes the student), then towards m. 0 throughout for the release's shared teacher;
  0 during the first semi-supervised epoch and the same formula after it for
  "shared_first_epoch" (so d = 1 - 1/(L + 1) at its first EMA step, L steps per epoch)."""
  if config.semi.teacher == "shared":
    return jnp.zeros((), jnp.float32)
  t0 = config.schedule.sup_only_epochs * config.steps_per_epoch
  since = jnp.maximum(step - t0 + 1, 1).astype(jnp.float32)
  decay = jnp.minimum(1.0 - 1.0 / since, config.semi.ema_decay)
  if config.semi.teacher == "shared_first_epoch":
    decay = jnp.where(step < t0 + config.steps_per_epoch, 0.0, decay)
  return decay


def make_tools(config: ml_collections.ConfigDict, axis_name: str = AXIS) -> Tools:
  """The model and the helpers every method's loss uses (`interface.Tools`)."""
  model = builders.build_model(config, axis_name=axis_name)
  ignore = config.data.ignore_label

  def run(variables, x, train, rng, method, *args):
    if not train:
      return model.apply(variables, x, False, *args, method=method), variables["batch_stats"]
    out, updates = model.apply(variables, x, True, *args, method=method,
                               mutable=["batch_stats"], rngs={"dropout": rng})
    return out, updates["batch_stats"]

  def ce(logits, labels):
    logits = resize_bilinear(logits, labels.shape[1:3])
    return global_mean(*cross_entropy_sum(logits, labels, ignore), axis_name)

  return Tools(config=config, model=model, axis_name=axis_name, run=run, ce=ce)


def make_teacher(tools: Tools, with_features):
  """The shared teacher: thresholded pseudo labels of the weak unlabeled view.

  `with_features(phase)`: whether the teacher's pixel features v of [labeled, unlabeled]
  are returned too (the labeled images then go through the teacher as well).
  """
  config, model = tools.config, tools.model
  semi, ignore = config.semi, config.data.ignore_label

  def teacher(state, batch, phase, rng) -> Teacher:
    x_u = batch["unlabeled_weak"]
    n_l = batch["labeled_image"].shape[0]
    train = semi.teacher_train_mode
    wants_features = with_features(phase)
    # Labeled images go through the teacher only when their features are wanted, or
    # when (train mode) they take part in the teacher's batch statistics as in the release.
    with_labeled = wants_features or train
    x = jnp.concatenate([batch["labeled_image"], x_u]) if with_labeled else x_u
    variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
    k_enc, k_feat = jax.random.split(rng)
    u, stats = tools.run(variables, x, train, k_enc, "encode")
    v, stats = tools.run({"params": state.teacher_params, "batch_stats": stats}, u, train,
                         k_feat, "features")
    logits = model.apply(variables, v, method="classify")
    logits_u = logits[n_l:] if with_labeled else logits
    probs = jax.nn.softmax(resize_bilinear(logits_u, x_u.shape[1:3]), axis=-1)
    confidence = jnp.max(probs, axis=-1)
    pseudo = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    keep = (confidence > semi.threshold) & (batch["unlabeled_ignore"] != ignore)
    pseudo = jnp.where(keep, pseudo, ignore)
    features = jax.lax.stop_gradient(v) if wants_features else None
    return Teacher(jax.lax.stop_gradient(pseudo), confidence, features, stats)

  return teacher


def make_train_step(config: ml_collections.ConfigDict):
  """Builds the per-device step for `config` (see the module docstring)."""
  if config.semi.teacher not in TEACHERS:
    raise ValueError(f"semi.teacher must be one of {TEACHERS}, got {config.semi.teacher!r}.")
  method = get_method(config.method)
  tools = make_tools(config)
  student_lr = optim.student_schedule(config)  # the backbone's
  ignore = config.data.ignore_label
  semi = config.semi
  method_loss = method.make_loss(tools)
  extra_update = method.make_extra_update(tools) if method.make_extra_update else None
  teacher = (method.make_pseudo_labels(tools) if method.make_pseudo_labels
             else make_teacher(tools, method.teacher_features))
  own_targets = method.make_targets(tools) if method.make_targets else None

  def step(state: TrainState, batch: Batch, phase) -> Tuple[TrainState, Dict[str, Any]]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
    k_teacher, k_cutmix, k_loss, k_extra = jax.random.split(key, 4)
    metrics = {}

    seen, targets = None, None
    teacher_stats = state.teacher_batch_stats
    if phase.semi:
      seen = teacher(state, batch, phase, k_teacher)
      teacher_stats = seen.batch_stats
      if own_targets is not None:
        targets = own_targets(batch, seen, k_cutmix)
      else:
        x_s, pseudo_s, ignore_s = cutmix(k_cutmix, semi.cutmix_prob,
                                         batch["unlabeled_strong"], seen.pseudo,
                                         batch["unlabeled_ignore"])
        targets = Targets(x_s, jnp.where(ignore_s == ignore, ignore, pseudo_s))
      real = batch["unlabeled_ignore"] != ignore
      real_count = jnp.sum(real.astype(jnp.float32))
      shares = {
          "confident_fraction": global_mean(
              jnp.sum((seen.pseudo != ignore).astype(jnp.float32)), real_count, AXIS),
          "teacher_confidence": global_mean(
              jnp.sum(jnp.where(real, seen.confidence, 0.0)), real_count, AXIS),
      }
      metrics.update({k: jax.lax.psum(v, AXIS) for k, v in shares.items()})
    inputs = StepInputs(state, batch, phase, seen, targets)

    grad_fn = jax.value_and_grad(method_loss, has_aux=True)
    (loss, (batch_stats, parts, *outputs)), grads = grad_fn(state.params, inputs, k_loss)
    if outputs:
      inputs = inputs._replace(outputs=jax.lax.stop_gradient(outputs[0]))
    loss = jax.lax.psum(loss, AXIS)
    grads = jax.lax.psum(grads, AXIS)
    metrics.update({k: jax.lax.psum(v, AXIS) for k, v in parts.items()})
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    extra, extra_metrics = state.extra, {}
    if extra_update is not None:
      extra, extra_metrics = extra_update(state.extra, inputs, k_extra)
      metrics.update(extra_metrics)

    decay = ema_decay(config, state.step) if phase.semi else jnp.zeros((), jnp.float32)
    ema = lambda t, s: decay * t + (1.0 - decay) * s
    teacher_params = jax.tree.map(ema, state.teacher_params, params)
    if semi.teacher_train_mode and phase.semi:
      # Release: the teacher's BN buffers come from its own train-mode forward passes.
      teacher_batch_stats = teacher_stats
    else:
      teacher_batch_stats = jax.tree.map(ema, state.teacher_batch_stats, batch_stats)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for value in extra_metrics.values():
      finite = finite & jnp.all(jnp.isfinite(value))
    metrics.update(loss=loss, grad_norm=grad_norm, ema_decay=decay,
                   learning_rate=student_lr(state.step),
                   nonfinite=1 - finite.astype(jnp.int32))
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats,
        teacher_params=teacher_params, teacher_batch_stats=teacher_batch_stats,
        opt_state=opt_state, extra=extra)
    # Keep the last good state on a non-finite step: nothing already trained is lost.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, metrics

  return step


def run_phases(config: ml_collections.ConfigDict) -> Tuple[Hashable, ...]:
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

  Each distinct phase compiles once; a further trace (a shape, dtype or placement that
  changes between steps) raises instead of silently recompiling. `max_traces` defaults to
  the number of phases of the run.
  """
  n = len(run_phases(config)) if max_traces is None else max_traces
  step = limit_traces(make_train_step(config), n)
  return jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, None), out_axes=(None, None),
                  static_broadcasted_argnums=(2,), devices=devices)
