"""A run that starts from another run's trained network: the fine-tuning baseline.

USSS's paper compares with fine-tuning a model trained on one dataset on another; the
release does it by loading a checkpoint into the new model "except the heads" (its
`--state`). Here `usss.init_from` names the workdir of an earlier run; a new run (not a
resumed one: a resume reads its own checkpoints) starts its student, and the teacher as
its copy, from that run's latest student variables, every one but the per-domain heads
(`head_<index>`, which keep their fresh initialisation: the label spaces differ). The
optimiser, step and method state start fresh, as a new run of the release does.

The source run may have other domains, heads and devices; every other variable must be
there with the same shape, or the run stops naming what differs (`WarmStartError`).
"""
import os
from typing import Any, Tuple

from absl import logging
import jax
import jax.numpy as jnp

from ddfp_jax.config.check import ConfigError
from ddfp_jax.interop.merge import merge_checked
from ddfp_jax.interop.names import StateDictMismatch
from ddfp_jax.training.checkpoint import Checkpointer

COLLECTIONS = (("params", "params"), ("batch_stats", "batch_stats"))
FRESH_PREFIX = "head_"   # the per-domain heads (head_<index>): never from the source run


class WarmStartError(ConfigError):
  """The source run of `usss.init_from` cannot start this run; the message says why."""


def source_of(config) -> str:
  """The workdir a new run starts from, or "" (only USSS runs have one)."""
  if config.method != "usss":
    return ""
  return config.usss.get("init_from", "") or ""


def _is_fresh(path: Tuple[str, ...]) -> bool:
  return path[0].startswith(FRESH_PREFIX)


def _take(target: Any, source: Any, where: str) -> Any:
  """`target` (a variable collection) with every leaf outside the heads from `source`
  (whose own heads, of other domains, are ignored)."""
  return merge_checked(target, source, where, wanted=lambda k: not _is_fresh(k),
                       allow_unexpected=True, sides=("source", "this run"))


def from_run(state, workdir: str):
  """`state` (a fresh `TrainState`) with student and teacher from `workdir`'s latest
  student variables, the heads excepted.

  Raises:
    WarmStartError: no checkpoint there, or variables that do not match.
  """
  ckpt_dir = os.path.join(os.path.expanduser(workdir), "checkpoints")
  hint = ("usss.init_from must be the --workdir of an earlier run of the same encoder and "
          "embedding head (e.g. the supervised run on the source dataset)")
  if not os.path.isdir(os.path.join(ckpt_dir, "latest")):
    raise WarmStartError(f"usss.init_from={workdir!r} holds no checkpoints "
                         f"({ckpt_dir}/latest is missing): {hint}.")
  with Checkpointer(ckpt_dir, read_only=True) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise WarmStartError(f"usss.init_from={workdir!r} holds no complete checkpoint: "
                           f"{hint}.")
    saved = checkpointer.restore_as_saved(step)
  where = f"usss.init_from={workdir!r} (step {step})"
  try:
    params = _take(state.params, saved.get("params"), where)
    stats = _take(state.batch_stats, saved.get("batch_stats"), where)
  except StateDictMismatch as e:
    raise WarmStartError(f"{e} {hint[0].upper()}{hint[1:]}.") from None
  logging.info("usss.init_from: student and teacher start from %s, step %d (every "
               "variable but the heads)", workdir, step)
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return state.replace(params=params, batch_stats=stats, teacher_params=copy(params),
                       teacher_batch_stats=copy(stats),
                       opt_state=state.tx.init(params))
