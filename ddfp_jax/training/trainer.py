"""The training loop: pmapped steps, periodic evaluation, checkpoints, metrics, resume.

`train_and_evaluate(config, workdir)` is the one entry point `main.py` calls. A run that
is stopped and started again with the same command continues exactly where the last
checkpoint left it: the state holds the step, the optimiser, the teacher, the method's
extra state and the RNG key; schedules and per-step randomness are functions of the
step; the input pipeline is a pure function of (seed, step). Besides checkpoints and
TensorBoard files, the workdir gets `run_info.json` (method, devices, versions) and
`eval_history.jsonl` (every evaluation's results), which tools read without TensorBoard.

Stops, each leaving the last complete checkpoint usable:
- SIGTERM (preemption, a time limit, maintenance, `kill`): every process saves the same
  step, waits for the save and raises `preemption.Preempted`;
- a non-finite loss or gradient: `NonFiniteError`, nothing saved after the bad step;
- process 0 cannot prepare the dataset: every process raises (process 0 its own error,
  the others a `DatasetError` pointing at process 0's log) instead of waiting for it.
"""
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers, periodic_actions
import flax
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from ddfp_jax.models import atrous_choice, builders, layers
from ddfp_jax.training import preemption, warm_start
from ddfp_jax.config import presets
from ddfp_jax.training.checkpoint import CheckpointError, Checkpointer
from ddfp_jax.config.check import ConfigError, check_config
from ddfp_jax.data import domains, pipeline
from ddfp_jax.training.evaluate import (eval_step_from_config, evaluate, make_eval_step,
                                        predict_kwargs_from_config)
from ddfp_jax.interop.pretrained import initial_train_state
from ddfp_jax.methods import get_method
from ddfp_jax.training.state import TrainState, create_train_state
from ddfp_jax.training.step import AXIS, phase_at, pmap_train_step, replicate
from ddfp_jax.training.visuals import TrainingImages


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss or gradient."""


def _eval_fns(config: ml_collections.ConfigDict):
  """{results prefix: (the config its validation set comes from, the pmapped eval step)}:
  {"": ...} for a run over one dataset; {"<domain>/": ...} with one step per domain of a
  multi-domain run (USSS: an image of domain d is read from head d; a pixel predicted as
  the "None" channel counts as a miss of its true class)."""
  model = builders.build_model(config)
  configs = domains.domain_configs(config)
  pmap = lambda step: jax.pmap(step, axis_name=AXIS, in_axes=(None, None, 0))
  if not configs:
    heads = get_method(config.method).make_eval_heads(config)
    return {"": (config, pmap(eval_step_from_config(config, model, heads=heads,
                                                    axis_name=AXIS)))}
  fns = {}
  for index, (name, c) in enumerate(configs.items()):
    k = c.data.num_classes
    step = make_eval_step(model, k, axis_name=AXIS, ignore_label=c.data.ignore_label,
                          num_predictions=k + 1 if model.none_class else None,
                          domain=index, **predict_kwargs_from_config(c))
    fns[f"{name}/"] = (c, pmap(step))
  return fns


def evaluate_state(config: ml_collections.ConfigDict, state: TrainState,
                   p_eval=None) -> Dict[str, Any]:
  """mIoU of the student and the teacher on validation, and of the method's extra heads
  (e.g. DDFP's FlowGMM) on the teacher's features. A multi-domain run scores each
  domain's validation set ("student/<domain>/miou", ...) and reports their mean as
  "student/miou" (what selects its best checkpoint, as the release); its teacher is the
  student (no phase of USSS is semi-supervised, so the EMA copies it) and is not scored."""
  p_eval = p_eval or _eval_fns(config)
  kwargs = dict(process_index=jax.process_index(), process_count=jax.process_count())
  results = {}
  models = {"student": (state.params, state.batch_stats)}
  several = len(p_eval) > 1 or "" not in p_eval
  if config.train.eval_teacher and not several:
    models["teacher"] = (state.teacher_params, state.teacher_batch_stats)
  for name, (params, stats) in models.items():
    # The extra heads score the teacher's features (DDFP's flow learns the teacher's).
    head_state = state.extra if name == "teacher" else None
    for prefix, (c, step) in p_eval.items():
      out = evaluate(step, {"params": params, "batch_stats": stats},
                     pipeline.eval_batches(c, **kwargs), head_state=head_state)
      for key, value in out.items():
        if not key.endswith("confusion"):   # the matrices stay out of the scalar logs
          results[f"{name}/{prefix}{key}"] = value
    if several:
      results[f"{name}/miou"] = float(np.mean([results[f"{name}/{p}miou"] for p in p_eval]))
  return results


def _scalars(results: Dict[str, Any]) -> Dict[str, float]:
  scalars = {}
  for key, value in results.items():
    if np.ndim(value) == 0:
      scalars[key] = float(value)
    else:   # per-class IoU
      scalars.update({f"{key}/{i}": float(v) for i, v in enumerate(np.asarray(value))})
  return scalars


def _prepare_data(config: ml_collections.ConfigDict) -> None:
  """Process 0 prepares the dataset files first and the others wait: hosts that share a
  data directory must not write it at the same time.

  Whether process 0 succeeded is broadcast to all processes, so that a failure stops
  every one of them at once: process 0 with its own error, the others with a
  `DatasetError` that points at process 0's log.
  """
  if jax.process_count() == 1:
    domains.prepare(config)
    return
  failure = None
  if jax.process_index() == 0:
    try:
      domains.prepare(config)
    except Exception as e:  # pylint: disable=broad-except
      failure = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
  if failure is not None:
    raise failure
  if not int(ok):
    raise pipeline.DatasetError(
        f"process 0 could not prepare the dataset {config.data.name!r}, so process "
        f"{jax.process_index()} of {jax.process_count()} stops too; the cause is in process "
        "0's log.")


def resolve_schedule(config: ml_collections.ConfigDict, num_unlabeled: int,
                     num_devices: int) -> ml_collections.ConfigDict:
  """The config with steps_per_epoch and total_steps derived from `config.epochs`.

  With epochs > 0, an epoch is one pass over the unlabeled images at the global batch
  (unlabeled_per_device x all devices), the last incomplete batch dropped as the
  release's loader does: steps_per_epoch = num_unlabeled // global batch. With epochs == 0
  the config is returned as it is.
  """
  if config.epochs <= 0:
    return config
  global_batch = config.data.unlabeled_per_device * num_devices
  steps_per_epoch = max(1, num_unlabeled // global_batch)
  resolved = config.copy_and_resolve_references()
  resolved.steps_per_epoch = steps_per_epoch
  resolved.total_steps = steps_per_epoch * config.epochs
  logging.info("%d epochs of %d unlabeled images at a global batch of %d: %d steps per "
               "epoch, %d steps.", config.epochs, num_unlabeled, global_batch,
               steps_per_epoch, resolved.total_steps)
  return resolved


def ready_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the config, applies its preset, prepares the data, and resolves the
  epoch-based schedule."""
  check_config(config)
  config = presets.apply_preset(config)
  _prepare_data(config)
  if config.epochs <= 0:
    return config
  return resolve_schedule(config, domains.num_unlabeled(config), jax.device_count())


def _choose_atrous_impl(config: ml_collections.ConfigDict,
                        workdir: str) -> ml_collections.ConfigDict:
  """The config with `model.atrous_impl = "auto"` replaced by the form this backend
  computes fastest (`models.atrous_choice`), logged and written to the workdir. Every
  process runs process 0's choice: the processes of a run must compile one program."""
  choice = atrous_choice.resolve(config)
  if jax.process_count() > 1:
    index = multihost_utils.broadcast_one_to_all(
        np.int32(layers.ATROUS_IMPLS.index(choice.impl)))
    choice = dataclasses.replace(choice, impl=layers.ATROUS_IMPLS[int(index)])
  if jax.process_index() == 0:
    logging.info("%s", choice.describe())
    atrous_choice.record(choice, workdir)
  if config.model.atrous_impl == choice.impl:
    return config
  config = config.copy_and_resolve_references()
  config.model.atrous_impl = choice.impl
  return config


def _average(history) -> Dict[str, float]:
  """Mean of each metric over the steps that report it: a window that spans a phase
  change mixes steps with and without, e.g., the flow's loss."""
  values = {}
  for metrics in jax.device_get(history):
    for key, value in metrics.items():
      values.setdefault(key, []).append(float(value))
  values.pop("nonfinite", None)
  return {key: float(np.mean(v)) for key, v in values.items()}


def _miou_line(results: Dict[str, Any], method: str) -> str:
  parts = [f"{name} mIoU {100 * results[f'{name}/miou']:.2f}"
           for name in ("teacher", "student") if f"{name}/miou" in results]
  return ", ".join(parts) + f" (method {method})"


def _print_summary(config: ml_collections.ConfigDict, workdir: str, step: int,
                   results: Dict[str, Any]) -> None:
  """The end of a run on stdout: final mIoU, where the run's files are, the config's note."""
  lines = [f"Final (step {step}): {_miou_line(results, config.method)}",
           f"Run directory: {workdir} ({EVAL_HISTORY}: mIoU at every evaluation; TensorBoard "
           "events; checkpoints/)"]
  if config.train.final_note:
    lines.append(config.train.final_note)
  print("\n".join(lines), flush=True)


# Files of the workdir that tools read without TensorBoard (ddfp_jax/tools/compare.py).
# What reading config.model.pretrained raises for a file that is not the model's (a
# mismatch, another kind of file, a refused pickle), reported as a config error.
_UNREADABLE_WEIGHTS = (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError)
RUN_INFO = "run_info.json"          # what ran where, rewritten when a run (re)starts
EVAL_HISTORY = "eval_history.jsonl"  # one line per evaluation, appended


def _json_value(value):
  """Results as JSON: arrays as lists, NaN (a class never seen) as null."""
  if np.ndim(value) > 0:
    return [_json_value(v) for v in np.asarray(value).tolist()]
  value = float(value)
  return None if math.isnan(value) else value


def _write_run_info(config: ml_collections.ConfigDict, workdir: str, start: int) -> None:
  info = {"method": config.method, "start_step": start, "total_steps": config.total_steps,
          "devices": sorted({d.device_kind for d in jax.devices()}),
          "num_devices": jax.device_count(), "process_count": jax.process_count(),
          "jax": jax.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  with open(os.path.join(workdir, RUN_INFO), "w") as f:
    json.dump(info, f, indent=1)


def _append_eval(workdir: str, step: int, results: Dict[str, Any]) -> None:
  record = {"step": step}
  record.update({k: _json_value(v) for k, v in results.items()})
  with open(os.path.join(workdir, EVAL_HISTORY), "a") as f:
    f.write(json.dumps(record) + "\n")


def _nonfinite_message(step: int, metrics: Dict[str, float], checkpointer: Checkpointer,
                       directory: str) -> str:
  last = checkpointer.latest_step()
  where = (f"the last checkpoint, step {last}, is intact in {directory}" if last is not None
           else "no checkpoint had been written yet")
  shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "grad_norm", "loss_flow")
                    if k in metrics)
  return (f"Training stopped at step {step}: the loss or a gradient norm is not finite "
          f"({shown}). That step did not change the model, and {where}. Usual causes are a "
          "learning rate too high for the batch size (see optim.learning_rate and "
          "optim.lr_scaling), a bfloat16 overflow (try --config.model.dtype=float32), or "
          "corrupt input (NaN pixels or labels outside the classes). Rerunning the same "
          "command resumes from the last checkpoint.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the final
  evaluation metrics."""
  config = ready_config(config)
  os.makedirs(workdir, exist_ok=True)
  config = _choose_atrous_impl(config, workdir)
  is_chief = jax.process_index() == 0
  # Only process 0 writes metrics (TensorBoard files and log lines): every metric is
  # already a mean over the global batch, the same in all processes.
  writer = (metric_writers.create_default_writer(workdir) if is_chief
            else metric_writers.MultiWriter([]))
  total = config.total_steps

  ckpt_dir = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints)
  try:
    state = initial_train_state(config, jax.random.key(config.seed))
  except _UNREADABLE_WEIGHTS as e:
    checkpointer.close()
    if not config.model.get("pretrained") or isinstance(e, FileNotFoundError):
      raise
    raise ConfigError(
        f"config.model.pretrained ({config.model.pretrained}) cannot start this run: "
        f"{str(e).rstrip('.')}. Pass a weight file of the config's model (docs/interop.md "
        "lists the files each model reads and how to convert them), or unset "
        "config.model.pretrained to train from scratch.") from None
  resumed = None
  if checkpointer.latest_step() is None and warm_start.source_of(config):
    try:
      state = warm_start.from_run(state, warm_start.source_of(config))
    except (ConfigError, CheckpointError):
      checkpointer.close()
      raise
  if checkpointer.latest_step() is not None:
    # A damaged newest step is moved to checkpoints/damaged/ and an older one used.
    try:
      state, resumed, damaged = checkpointer.restore_newest_intact(state)
    except CheckpointError:
      checkpointer.close()
      raise
    if damaged and is_chief:
      print(f"warning: resuming from step {resumed}, not from the damaged "
            + ", ".join(f"step {d.step} ({d.reason}; moved to {d.moved_to})" for d in damaged)
            + ".", file=sys.stderr, flush=True)
    logging.info("Resumed from step %d in %s.", resumed, ckpt_dir)
  start = resumed or 0
  # As soon as the start step is known: JAX's service needs it before a notice comes.
  watch = preemption.Watch(start)
  if resumed is None:
    writer.write_hparams(flax.traverse_util.flatten_dict(config.to_dict(), sep="."))
  if is_chief:
    _write_run_info(config, workdir, start)
  stop = total if config.train.steps_this_run <= 0 else min(
      total, start + config.train.steps_this_run)

  state = replicate(state)
  p_step = pmap_train_step(config)
  p_eval = _eval_fns(config)
  # Pictures for TensorBoard at each evaluation, drawn by process 0 alone.
  pictures = TrainingImages(config) if is_chief and config.train.num_images > 0 else None
  batches = domains.train_batches(config, start_step=start,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  try:
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
    history = []
    pending = None   # the previous step's metrics, read one step late to keep the device busy
    results = {}
    def stop_if_nonfinite(done, metrics):
      if int(metrics["nonfinite"]):
        checkpointer.wait()
        bad = {k: float(v) for k, v in metrics.items()}
        raise NonFiniteError(_nonfinite_message(done, bad, checkpointer, ckpt_dir))

    done = start
    preempted = False
    with watch:
      for step in range(start, stop):
        state, metrics = p_step(state, next(batches), phase_at(config, step))
        if pending is not None:
          stop_if_nonfinite(*pending)
        done = step + 1
        pending = (done, metrics)
        history.append(metrics)
        report(done)
        # Asked at every step on every process (JAX's protocol needs it); at the last step
        # the run saves and ends anyway.
        preempted = watch.reached(done) and done < stop
        if done % config.train.log_every == 0 or done == stop or preempted:
          averaged = _average(history)
          writer.write_scalars(done, {f"train/{k}": v for k, v in averaged.items()})
          writer.flush()   # on disk now: a process that is killed keeps its curves
          history = []
        # A preempted run saves at once and skips an evaluation due at this step.
        at_eval = (done % config.train.eval_every == 0 or done == total) and not preempted
        at_checkpoint = done % config.train.checkpoint_every == 0 or done == stop or preempted
        if at_eval or at_checkpoint:
          # Never evaluate or save a state after a non-finite step. The last step is always
          # a checkpoint boundary, so every step is checked by the end of the loop.
          stop_if_nonfinite(done, metrics)
          pending = None
        if at_eval:
          results = evaluate_state(config, state, p_eval)
          writer.write_scalars(done, _scalars(results))
          if pictures is not None:
            writer.write_images(done, pictures(state))
          if is_chief:
            _append_eval(workdir, done, results)
          best = max(results.get("student/miou"), results.get("teacher/miou", -1.0))
          checkpointer.save_best(done, state, best)
        if at_checkpoint:
          checkpointer.save(done, state, force=preempted)
        if preempted:
          break
    checkpointer.wait()
    writer.flush()
    if preempted:
      raise preemption.Preempted(done, os.path.join(ckpt_dir, "latest"))
    if results and is_chief:
      _print_summary(config, workdir, stop, results)
  finally:
    # Stops the input threads now (not at exit) and lets pending saves finish.
    batches.close()
    checkpointer.close()
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: Optional[int] = None) -> Dict[str, Any]:
  """Eval-only mode: scores the latest (or given) checkpoint in `workdir`."""
  config = ready_config(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # Only read: a workdir without checkpoints is not given an empty checkpoints/ folder.
  checkpointer = (Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints)
                  if os.path.isdir(os.path.join(ckpt_dir, "latest")) else None)
  if checkpointer is None or checkpointer.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint to evaluate in {ckpt_dir}. Train first with the same --workdir, or "
        "point --workdir at a directory that holds a checkpoints/ folder from a run.")
  target = create_train_state(config, jax.random.key(config.seed))
  try:
    state = checkpointer.restore(target, step)
  except CheckpointError as e:
    step = checkpointer.latest_step() if step is None else step
    others = [s for s in checkpointer.all_steps() if s != step]
    raise CheckpointError(
        f"Cannot evaluate: {e}. "
        + (f"The other complete step(s) in {ckpt_dir}: {', '.join(map(str, others))}; move "
           f"{os.path.join(ckpt_dir, 'latest', str(step))} out of latest/ to evaluate the "
           "newest of them, or resume training with the same command, which sets damaged "
           "steps aside itself and continues from the newest intact one."
           if others else "There is no other checkpoint to fall back on; the run has to "
           "be trained again (in a new --workdir, to keep these files).")) from None
  finally:
    checkpointer.close()
  results = evaluate_state(config, state)
  if jax.process_index() == 0:
    print(f"Checkpoint step {int(state.step)}: {_miou_line(results, config.method)}",
          flush=True)
  return results
