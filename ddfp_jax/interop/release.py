"""The release's DDFP training checkpoint, imported as a train state of a DDFP config.

A release checkpoint is the dict the release's train script saves with torch.save:
`model_state` the student, `teacher_state` the teacher, `nf_model_state` the flow with its
GMM `means`, plus `epoch`, `best_miou` and optimiser states, every state dict with
DistributedDataParallel's `module.`. `import_release_checkpoint` converts student, teacher
and flow into a train state of the given config (whose method must be "ddfp": the flow
lives in DDFP's extra state) and writes it as an orbax checkpoint into
`workdir/checkpoints/latest/STEP`, so that `python main.py --config ... --workdir DIR
--mode eval` scores it. The optimiser states are not converted (the train state's are
fresh), nor is the release's progress: the checkpoint's step is `step` (0 unless given), so
training in that workdir starts from the imported weights rather than resuming the
release's run.
"""
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.interop.merge import merge_checked
from ddfp_jax.interop.names import (StateDictMismatch, describe_architecture,
                                    infer_architecture, strip_module_prefix)
from ddfp_jax.interop.pretrained import convert_state_dict
from ddfp_jax.interop.reading import read_torch_checkpoint
from ddfp_jax.models.flow import flow_params_from_torch
from ddfp_jax.training.state import create_train_state

PyTree = Any
# Entries of the release's training checkpoint: student, teacher, flow (with its means).
RELEASE_ENTRIES = ("model_state", "teacher_state", "nf_model_state")

# Keys of the release's flow module (after `module.`): the FrEIA net under `inn.`, the
# GMM means beside it. A coupling's linear layers, a permutation's fixed index arrays.
_FLOW_KEY = re.compile(r"(?:inn\.)?module_list\.(\d+)\."
                       r"(?:subnet[12]\.\d+\.(?:weight|bias)|perm|perm_inv)$")


def release_flow_variables(state_dict: Mapping[str, Any], target: PyTree,
                           source: str = "the flow state dict") -> PyTree:
  """The release's flow state dict (`nf_model_state`) -> `FeatureDensity` variables.

  Args:
    state_dict: `inn.module_list.*` (FrEIA's GLOWCouplingBlock / PermuteRandom) and
      `means` (K, D), with or without `module.`.
    target: `FeatureDensity` variables ({"params": {"flow", "means"}}) or their shapes.
    source: how to name the state dict in an error message.

  Raises:
    StateDictMismatch: for a tensor that is no part of the flow, missing means, or arrays
      whose shapes differ from `target` (another feature width, subnet width or number of
      classes).
  """
  state_dict = strip_module_prefix(state_dict)
  unexpected = [k for k in state_dict if k != "means" and not _FLOW_KEY.match(k)]
  missing = [] if "means" in state_dict else ["means"]
  if unexpected or missing:
    raise StateDictMismatch(source, missing, unexpected, [])
  num_blocks = sum(1 for _ in target["params"]["flow"])
  try:
    flow = flow_params_from_torch(state_dict, num_blocks)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{source}: {e.args[0] if e.args else e}") from e
  params = {"flow": flow, "means": np.asarray(state_dict["means"], np.float32)}
  return {"params": merge_checked(target["params"], params, source)}


def release_train_state(checkpoint: Mapping[str, Any], config, source: str = "the checkpoint"):
  """A `TrainState` of `config` holding the release checkpoint's student, teacher and flow.

  Everything else (step 0, fresh optimiser states, the RNG key) is what
  `create_train_state(config, key(config.seed))` gives; `config.model.pretrained` is not
  read.

  Raises:
    ValueError: if `checkpoint` lacks one of `RELEASE_ENTRIES`, or `config.method` is not
      "ddfp" (only DDFP's extra state has a place for the flow).
  """
  missing = [k for k in RELEASE_ENTRIES if not isinstance(checkpoint.get(k), Mapping)]
  if missing:
    raise ValueError(f"{source} is not a training checkpoint of the release: it has no "
                     f"{', '.join(missing)} (its entries: {sorted(map(str, checkpoint))}). "
                     f"A state dict of one model converts with --kind segmentation.")
  # The flow goes into DDFP's extra state; another method's state has no "flow_params", and
  # dropping the flow silently would give a state that no longer is the release's run.
  if config.method != "ddfp":
    raise ValueError(f"{source} is a DDFP run, whose flow goes into DDFP's extra state "
                     f"(state.extra['flow_params']), but config.method is "
                     f"{config.method!r}. Import it with a ddfp config, or pass "
                     f"--config.method=ddfp.")
  config = config.copy_and_resolve_references()
  config.model.pretrained = None
  key = jax.random.key(config.seed)
  # Shapes first (no compilation), so that a checkpoint that does not fit fails at once.
  shapes = jax.eval_shape(lambda k: create_train_state(config, k), key)
  models = {}
  for entry in ("model_state", "teacher_state"):
    target = {"params": shapes.params, "batch_stats": shapes.batch_stats}
    converted = convert_state_dict(checkpoint[entry], target, "segmentation",
                                   f"{source} [{entry}]")
    models[entry] = jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), converted, target)
  flow = release_flow_variables(checkpoint["nf_model_state"], shapes.extra["flow_params"],
                                f"{source} [nf_model_state]")
  state = create_train_state(config, key)
  return state.replace(
      params=models["model_state"]["params"],
      batch_stats=models["model_state"]["batch_stats"],
      teacher_params=models["teacher_state"]["params"],
      teacher_batch_stats=models["teacher_state"]["batch_stats"],
      extra={**state.extra, "flow_params": flow})


def _checkpointer(config, workdir: str):
  from ddfp_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(str(workdir), "checkpoints")
  return ckpt_dir, Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints)


def check_import_target(config, workdir: str, step: int) -> None:
  """Raises ValueError for a negative step or a `workdir` that already holds checkpoints:
  an import never overwrites a run."""
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  if not os.path.isdir(os.path.join(str(workdir), "checkpoints")):
    return   # (nothing to overwrite, and a refused import leaves no directory behind)
  ckpt_dir, checkpointer = _checkpointer(config, workdir)
  try:
    latest = checkpointer.latest_step()
  finally:
    checkpointer.close()
  if latest is not None:
    raise ValueError(f"{ckpt_dir} already holds checkpoints (latest step {latest}); import "
                     f"into an empty workdir.")


def write_imported_state(state, config, workdir: str, step: int) -> str:
  """Saves an imported train state as `workdir/checkpoints/latest/step` (which must not
  hold checkpoints yet); returns the checkpoint directory."""
  check_import_target(config, workdir, step)
  ckpt_dir, checkpointer = _checkpointer(config, workdir)
  try:
    checkpointer.save(step, state.replace(step=jnp.asarray(step, state.step.dtype)),
                      force=True)
    checkpointer.wait()
  finally:
    checkpointer.close()
  return ckpt_dir


def import_release_checkpoint(path: str, config, workdir: str, step: int = 0,
                              trust_pickle: bool = False) -> str:
  """Converts the release's training checkpoint at `path` into an orbax checkpoint of
  `config`'s train state in `workdir/checkpoints/latest/step` (see the module docstring);
  returns a report.

  Raises:
    ValueError: if the file is not a release checkpoint, `config` is not a DDFP one,
      `workdir` already holds checkpoints, or (StateDictMismatch) the checkpoint does not
      fit `config`'s model or flow.
  """
  path = str(path)
  check_import_target(config, workdir, step)
  checkpoint = read_torch_checkpoint(path, trust_pickle)
  state = release_train_state(checkpoint, config, path)
  ckpt_dir = write_imported_state(state, config, workdir, step)
  arch = infer_architecture(strip_module_prefix(checkpoint["model_state"]), "segmentation")
  means = strip_module_prefix(checkpoint["nf_model_state"])["means"]
  progress = ", ".join(f"{k} {checkpoint[k]}" for k in ("epoch", "best_miou")
                       if k in checkpoint and np.ndim(checkpoint[k]) == 0)
  return (f"{path}: {describe_architecture(arch, 'segmentation')}, student and teacher, and "
          f"a flow of {sum(1 for _ in state.extra['flow_params']['params']['flow'])} coupling "
          f"blocks with {means.shape[0]} GMM means of dimension {means.shape[1]}"
          + (f" ({progress})" if progress else "") + f" -> {ckpt_dir}/latest/{step} "
          f"(optimiser states fresh).")
