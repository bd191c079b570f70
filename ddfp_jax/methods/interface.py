"""What a method provides, and what the shared train step hands it.

A method is a `Method`: a few plain functions. `ddfp_jax.methods.METHODS` maps the names
`config.method` accepts to them. The shared step (`ddfp_jax/training/step.py`) does the
rest for every method, once: per-step and per-device keys; in semi-supervised phases the
teacher's thresholded pseudo labels on the weak view and CutMix of the strong view (a
method may bring its own teacher and its own strong view); the gradient of the method's loss summed over devices; the
student's optimiser; the method's update of its extra state; the teacher's EMA; the guard
that keeps the state of a non-finite step; metrics; `pmap` with the phase static, so each
phase compiles once.

A method's loss is written per device like everything in the step: each loss term is this
device's share of the global mean (`tools.ce` does that for cross-entropy), never a
per-device mean, so results do not depend on how the batch is split over devices.
"""
from typing import Any, Callable, Dict, Hashable, NamedTuple, Optional, Tuple

import jax
import ml_collections

Array = jax.Array
PyTree = Any
Batch = Dict[str, Array]


class Phase(NamedTuple):
  """The phase of methods that only tell warm-up from semi-supervised steps.

  A method may define its own phase type: any hashable NamedTuple with a `semi` field
  (the shared step reads only that). It is a static argument of the compiled step.
  """
  semi: bool


class Teacher(NamedTuple):
  """The teacher's view of a batch, made once per semi-supervised step."""
  pseudo: Array                # (N, H, W) int32 thresholded pseudo labels (ignore elsewhere)
  confidence: Array            # (N, H, W) max softmax probability
  features: Optional[Array]    # pixel features v of [labeled, unlabeled], when asked for
  batch_stats: PyTree          # the teacher's BN statistics after its forward pass
  extra: Optional[PyTree] = None   # anything else a method's own teacher makes (DGCL's
                                   # contrastive labels)


class Targets(NamedTuple):
  """The strong view after CutMix and its pseudo labels (ignore where padded)."""
  image: Array
  label: Array
  extra: Optional[PyTree] = None   # the view's other per-pixel maps, when a method's own
                                   # strong view makes them (CSS's confidences)


class Tools(NamedTuple):
  """What the shared step builds once and every method uses."""
  config: ml_collections.ConfigDict
  model: Any                   # DeepLabV3Plus with cross-replica BN over `axis_name`
  axis_name: str
  # run(variables, x, train, rng, method, *args) -> (output, batch_stats): model.apply
  # with the BN statistics threaded through in train mode.
  run: Callable[..., Tuple[Any, PyTree]]
  # ce(logits, labels) -> this device's share of the global mean cross-entropy, logits
  # resized (bilinear) to the labels' size.
  ce: Callable[[Array, Array], Array]


class StepInputs(NamedTuple):
  """Everything a method's loss and extra update see of one step."""
  state: Any                   # TrainState before the step (`state.extra` is the method's)
  batch: Batch
  phase: Hashable
  teacher: Optional[Teacher]   # None in warm-up phases
  targets: Optional[Targets]   # None in warm-up phases
  # What the loss returned as its outputs (detached), for the extra update; else None.
  outputs: Optional[PyTree] = None


# loss(params, inputs, rng) -> (loss, (batch_stats, {name: scalar})), or
# (loss, (batch_stats, {name: scalar}, outputs)) where outputs is a pytree of this
# step's detached values the method's extra update reads (`StepInputs.outputs`), so it
# need not run the network again (DGCL's memory takes the student's features).
LossFn = Callable[[PyTree, StepInputs, Array], Tuple[Array, Tuple[PyTree, Dict[str, Array]]]]
# update(extra, inputs, rng) -> (extra, {name: scalar}); every metric must be finite.
ExtraUpdate = Callable[[PyTree, StepInputs, Array], Tuple[PyTree, Dict[str, Array]]]
# head(extra, v) -> class scores (N, h, w, K) of an extra evaluation head.
EvalHead = Callable[[PyTree, Array], Array]
# log_density(extra, v) -> (N, h, w) log-density of pixel features v (N, h, w, C).
LogDensity = Callable[[PyTree, Array], Array]


def no_block() -> Optional[ml_collections.ConfigDict]:
  return None


def no_extra(config, rng, feature_dim) -> PyTree:
  del config, rng, feature_dim
  return {}


def never(phase) -> bool:
  del phase
  return False


class Method(NamedTuple):
  """A method of the framework (see the module docstring).

  `config_block`: the method's own config block (a ConfigDict with a comment per key)
  under config.<name>; None (the default) when it has no keys of its own.
  """
  # phase_at(config, step) -> the phase of global step `step` (a Python int).
  phase_at: Callable[[ml_collections.ConfigDict, int], Hashable]
  # make_loss(tools) -> LossFn.
  make_loss: Callable[[Tools], LossFn]
  config_block: Callable[[], Optional[ml_collections.ConfigDict]] = no_block
  # Whether the teacher also computes the pixel features of [labeled, unlabeled] images.
  teacher_features: Callable[[Hashable], bool] = never
  # init_extra(config, rng, feature_dim) -> the method's extra state (a pytree kept in
  # TrainState.extra, checkpointed with it); feature_dim is the width of v.
  init_extra: Callable[[ml_collections.ConfigDict, Array, int], PyTree] = no_extra
  # make_extra_update(tools) -> ExtraUpdate, run after the student's update in every
  # phase (it decides from inputs.phase whether to change anything).
  make_extra_update: Optional[Callable[[Tools], ExtraUpdate]] = None
  # make_pseudo_labels(tools) -> fn(state, batch, phase, rng) -> Teacher, replacing the
  # shared thresholded teacher (`ddfp_jax.training.step.make_teacher`).
  make_pseudo_labels: Optional[Callable[[Tools], Callable[..., Teacher]]] = None
  # make_targets(tools) -> fn(batch, teacher, rng) -> Targets, replacing the shared
  # CutMix of `batch["unlabeled_strong"]` (CSS builds its strong view after the teacher).
  make_targets: Optional[Callable[[Tools], Callable[..., Targets]]] = None
  # make_eval_heads(config) -> {name: EvalHead}: extra predictions scored next to the
  # classifier's (results "<model>/<name>_miou"), or {}.
  make_eval_heads: Callable[[ml_collections.ConfigDict], Dict[str, EvalHead]] = (
      lambda config: {})
  # make_log_density(config) -> fn(extra, v) -> (..., ) per-pixel log-density of pixel
  # features v under the method's extra state (DDFP's flow), for methods that learn one;
  # the diagnostics and the training images read it.
  make_log_density: Optional[Callable[[ml_collections.ConfigDict], LogDensity]] = None
  # check_config(config) -> list of problems (one sentence each) with its block.
  check_config: Callable[[ml_collections.ConfigDict], list] = lambda config: []
