"""Checkpoints of the train state: the latest N steps, and the best one by a metric.

A thin layer over two orbax `CheckpointManager`s:

    directory/latest/<step>/   the newest `keep` checkpoints, for resuming
    directory/best/<step>/     the single checkpoint with the best validation metric

Saves are atomic: orbax writes into `<step>.orbax-checkpoint-tmp-<time>` and renames it to
`<step>` only once every file is written, so a crash mid-save leaves the previous step as
the latest complete checkpoint. Leftover temporary directories are never listed as steps
and are removed when the next `Checkpointer` opens the directory.

The state is stored as a flax state dict (nested dicts of arrays; dataclasses and
namedtuples such as optax states become dicts keyed by field name), so a checkpoint can be
read without the classes that wrote it and restored into any structure with the same
state dict.

Multi-process runs (several hosts, or several processes on one host): the directory must
be shared by all processes (a network file system, a bucket, or the local disk when they
run on one machine), and every process must call `save`, `save_best` and `restore` with
the same arguments (the metric included: use a psum-ed one). The train state is replicated
on every device, but in each process it is a host-local array (what `pmap` returns), which
orbax cannot save from several processes; `save` therefore first views each such leaf as
one global array replicated over all devices of all processes (built from the copies the
processes already hold, without communication). Orbax then synchronises the processes,
writes each array once (not once per process) and lets process 0 write the metadata, so
the files are the same as a single-process run's and a checkpoint can be resumed with any
number of processes and devices. `restore` reads the whole state in every process, into
the target's placement (host-local arrays, as the trainer needs them).

Damage: orbax does not notice a data file overwritten in place (it decodes and returns
other numbers), so every save also stores a CRC-32 of each leaf's bytes in the step's
metadata, and `restore` compares the restored values with them. A step that cannot be read
or does not match raises `CheckpointError` naming the step and the first leaf or file at
fault; `restore_newest_intact` (the trainer's resume) instead moves such steps aside to
`directory/damaged/` and resumes from the newest step that reads. Steps saved before the
checksums existed are restored unchecked.
"""
import dataclasses
import gc
import math
import os
import shutil
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from absl import logging

import flax.serialization
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

_BEST_MODES = ("max", "min")
# Key under which the best checkpoint's metric is stored in orbax's per-step metrics.
_METRIC_KEY = "metric"
# Key of the per-leaf CRC-32s in a step's custom metadata.
_CHECKSUM_KEY = "crc32"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names the step and the cause."""


@dataclasses.dataclass(frozen=True)
class Damaged:
  """A step that did not restore: why, and where its files are now."""
  step: int
  reason: str
  moved_to: Optional[str] = None


class Checkpointer:
  """Saves and restores train-state pytrees (unreplicated host arrays).

  Args:
    directory: root directory; "latest" and "best" sub-directories are created in it.
    keep: number of most recent step checkpoints kept under "latest".
    best_mode: "max" if a larger metric is better (mIoU), "min" if a smaller one is.
    async_save: write in a background thread; `save` returns once the arrays have been
      copied off the devices. Call `wait()` before reading the files.
    read_only: only read (another run's checkpoints): nothing is created, cleaned up or
      saved under `directory`.
  """

  def __init__(self, directory, keep: int = 2, best_mode: str = "max",
               async_save: bool = True, read_only: bool = False):
    if best_mode not in _BEST_MODES:
      raise ValueError(f"best_mode must be one of {_BEST_MODES}, got {best_mode!r}")
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    directory = str(directory)
    # Orbax wants absolute paths; remote ones (gs://...) already are.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.best_mode = best_mode
    writes = not read_only
    # The handler named, so that a step's tree metadata can be read (`restore_as_saved`).
    self._latest = ocp.CheckpointManager(
        f"{self.directory}/latest", item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=writes, cleanup_tmp_directories=writes,
            read_only=read_only, enable_async_checkpointing=async_save))
    self._best = ocp.CheckpointManager(
        f"{self.directory}/best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics[_METRIC_KEY], best_mode=best_mode,
            keep_checkpoints_without_metrics=False, create=writes,
            cleanup_tmp_directories=writes, read_only=read_only,
            enable_async_checkpointing=async_save))
    best_step = self._best.best_step()
    self._best_metric: Optional[float] = None
    if best_step is not None:
      self._best_metric = float(self._best.metrics(best_step)[_METRIC_KEY])

  # Latest checkpoints.

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` as step `step` and prunes all but the newest `keep` steps.

    Args:
      step: the global step; a step not newer than the latest saved one is skipped
        (returns False), so re-saving the step a run resumed from is harmless.
      state: pytree of jax / numpy arrays and Python scalars.
      force: save even if orbax's save policy would skip this step.

    Returns:
      Whether a checkpoint was started.
    """
    tree = flax.serialization.to_state_dict(state)
    return self._latest.save(step, args=ocp.args.StandardSave(_globally_replicated(tree)),
                             custom_metadata={_CHECKSUM_KEY: _checksums(tree)}, force=force)

  def latest_step(self) -> Optional[int]:
    """The newest complete step under "latest", or None."""
    return self._latest.latest_step()

  def all_steps(self):
    """The complete steps under "latest", oldest first."""
    return sorted(self._latest.all_steps())

  def restore(self, target_state: Any, step: Optional[int] = None) -> Any:
    """Restores a step (default: the latest) into the structure of `target_state`.

    Leaves come back with the type, dtype and sharding of the matching `target_state`
    leaf (jax arrays keep their sharding; numpy arrays stay numpy). `target_state` may
    also hold `jax.ShapeDtypeStruct`s with shardings.

    Raises:
      FileNotFoundError: if there is no checkpoint to restore, or no such step.
      CheckpointError: the step's files cannot be read, or its values do not match the
        checksums stored when it was saved.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}/latest")
    return _restore(self._latest, step, target_state)

  def restore_as_saved(self, step: Optional[int] = None) -> Dict[str, Any]:
    """A step (default: the latest) as the state dict it was saved from, without a target
    structure (another run's state, whose config may differ): nested dicts of arrays on
    this process's first device, whatever devices saved them; checked like `restore`.

    Raises:
      FileNotFoundError, CheckpointError: as `restore`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}/latest")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      tree = self._latest.item_metadata(step)
      tree = getattr(tree, "tree", tree)
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            tree)
    except Exception as e:  # pylint: disable=broad-except  (orbax, JSON errors)
      raise CheckpointError(f"checkpoint step {step} ({self._latest.directory}/{step}) "
                            f"cannot be read: {_first_line(e)}") from None
    return _restore(self._latest, step, target, as_saved=True)

  def restore_newest_intact(self, target_state: Any) -> Tuple[Any, int, List[Damaged]]:
    """The newest step that restores intact, for resuming: (state, step, damaged steps).

    Each newer step that fails is moved (by process 0, the others wait) to
    `directory/damaged/<step>`, so that nothing is deleted and the resumed run can save
    that step again.

    Raises:
      FileNotFoundError: if there is no checkpoint.
      CheckpointError: if no step restores; the message lists every step and its cause.
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.directory}/latest")
    damaged: List[Damaged] = []
    restored = None
    for step in reversed(steps):
      try:
        restored = _restore(self._latest, step, target_state)
        break
      except CheckpointError as e:
        damaged.append(Damaged(step, str(e)))
    if restored is None:
      raise CheckpointError(
          "No checkpoint in " + f"{self.directory}/latest can be restored: "
          + "; ".join(d.reason for d in damaged) + ". Nothing was changed. If the files were "
          "written by a different config (model, method), resume with that config; "
          "otherwise start again in a new --workdir.")
    damaged = [self._set_aside(d) for d in damaged]
    for d in damaged:
      logging.warning("%s Moved to %s; resuming from step %d.", d.reason, d.moved_to, step)
    return restored, step, damaged

  def _set_aside(self, damaged: Damaged) -> Damaged:
    target = os.path.join(self.directory, "damaged", str(damaged.step))
    if os.path.exists(target):
      target = f"{target}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, "latest", str(damaged.step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{damaged.step}")
    self._latest.reload()
    return dataclasses.replace(damaged, moved_to=target)

  # Best checkpoint.

  @property
  def best_metric(self) -> Optional[float]:
    """The metric of the current best checkpoint, or None if there is none."""
    return self._best_metric

  def best_step(self) -> Optional[int]:
    """The step of the best checkpoint, or None."""
    return self._best.best_step()

  def is_better(self, metric_value: float) -> bool:
    """Whether `metric_value` would replace the best checkpoint (non-finite never does)."""
    if not math.isfinite(metric_value):
      return False
    if self._best_metric is None:
      return True
    if self.best_mode == "max":
      return metric_value > self._best_metric
    return metric_value < self._best_metric

  def save_best(self, step: int, state: Any, metric_value: float) -> bool:
    """Replaces the best checkpoint with `state` if `metric_value` is strictly better.

    The metric is stored with the checkpoint (orbax per-step metrics), so a resumed run
    keeps comparing against it. The previous best is deleted only after the new one is
    complete.

    Returns:
      Whether `state` became the best checkpoint.
    """
    metric_value = float(metric_value)
    if not self.is_better(metric_value):
      return False
    tree = flax.serialization.to_state_dict(state)
    saved = self._best.save(step, args=ocp.args.StandardSave(_globally_replicated(tree)),
                            metrics={_METRIC_KEY: metric_value},
                            custom_metadata={_CHECKSUM_KEY: _checksums(tree)}, force=True)
    if saved:
      self._best_metric = metric_value
    return saved

  def restore_best(self, target_state: Any) -> Any:
    """Restores the best checkpoint into the structure of `target_state`."""
    step = self.best_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}/best")
    return _restore(self._best, step, target_state)

  # Life cycle.

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._latest.close()
    self._best.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _globally_replicated(tree: Any) -> Any:
  """Host-local jax arrays (identical in every process) as global replicated arrays;
  `tree` as it is in a single-process run."""
  if jax.process_count() == 1:
    return tree
  # Devices grouped by process, as host_local_array_to_global_array requires.
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  mesh = jax.sharding.Mesh(np.asarray(devices), ("replica",))

  def convert(leaf):
    if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
      return multihost_utils.host_local_array_to_global_array(
          leaf, mesh, jax.sharding.PartitionSpec())
    return leaf   # numpy arrays and scalars: orbax writes them from process 0
  return jax.tree.map(convert, tree)


def _leaves(tree: Any) -> Dict[str, np.ndarray]:
  """The leaves of a state dict by path ("params/conv/kernel"), as host arrays."""
  flat = flax.traverse_util.flatten_dict(tree, sep="/", keep_empty_nodes=False)
  return {path: np.asarray(leaf) for path, leaf in flat.items()}


def _checksums(tree: Any) -> Dict[str, int]:
  """CRC-32 of every leaf's bytes (on the host; about 1 s per GB)."""
  return {path: zlib.crc32(np.ascontiguousarray(value).view(np.uint8).reshape(-1))
          for path, value in _leaves(tree).items()}


def _first_line(error: BaseException) -> str:
  """The innermost cause, on one line: TensorStore's outer message is a page of specs."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = f"{type(error).__name__}: " + " ".join(str(error).split()).rstrip(". ")
  return (text[:240] + "...") if len(text) > 240 else text or type(error).__name__


def _is_abandoned_read(exc: BaseException, origin: Any = None) -> bool:
  """What orbax's abandoned reads raise when Python finalises them, or when TensorStore
  completes them after orbax closed their event loop."""
  return (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)) or (
      "coroutine" in repr(origin))


def _quiet_abandoned_reads() -> None:
  """Keeps the reads orbax abandons when one array of a step fails (the other arrays)
  from printing a traceback each, through either hook Python reports them with:
  "Exception ignored in <coroutine ...>" when they are collected, "Event loop is closed"
  when TensorStore completes them, which can happen before the restore has even returned.
  Installed before every restore; other errors are reported as before."""
  if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def on_unraisable(unraisable):
      if not _is_abandoned_read(unraisable.exc_value, unraisable.object):
        unraisable_hook(unraisable)

    def on_exception(kind, value, traceback):
      if not _is_abandoned_read(value):
        except_hook(kind, value, traceback)
    on_unraisable.drops_abandoned_reads = True
    sys.unraisablehook, sys.excepthook = on_unraisable, on_exception


def _restore(manager: ocp.CheckpointManager, step: int, target_state: Any,
             as_saved: bool = False) -> Any:
  """Step `step` into the structure of `target_state` (with `as_saved`, a state dict,
  returned as one), checked against its checksums."""
  where = f"{manager.directory}/{step}"
  if step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint step {step} under {manager.directory}")
  # The target as it is (not made global): leaves come back placed like its leaves.
  target = target_state if as_saved else flax.serialization.to_state_dict(target_state)
  failure = None
  _quiet_abandoned_reads()
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    stored = (manager.metadata(step).custom_metadata or {}).get(_CHECKSUM_KEY)
  except Exception as e:  # pylint: disable=broad-except  (orbax, TensorStore, JSON errors)
    failure = _first_line(e)
  if failure is not None:
    gc.collect()   # the abandoned reads, now rather than at exit
    raise CheckpointError(f"checkpoint step {step} ({where}) cannot be read: {failure}")
  if stored is not None:
    got = _checksums(restored)
    bad = sorted(path for path in set(got) | set(stored) if got.get(path) != stored.get(path))
    if bad:
      raise CheckpointError(
          f"checkpoint step {step} ({where}) is damaged: {len(bad)} of {len(stored)} arrays "
          f"do not match the checksums stored when it was saved (first: {bad[0]})")
  if as_saved:
    return restored
  return flax.serialization.from_state_dict(target_state, restored)
