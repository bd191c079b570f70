"""Pieces every method's loss and schedule share."""
import jax
import jax.numpy as jnp
import ml_collections

from ddfp_jax.methods.interface import StepInputs, Tools
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.training.losses import global_mean, ohem_cross_entropy_sum

SUP_LOSSES = ("ce", "ohem")


def epoch_of(config: ml_collections.ConfigDict, step: int) -> int:
  return step // config.steps_per_epoch


def semi_started(config: ml_collections.ConfigDict, step: int) -> bool:
  """True once the supervised warm-up (`schedule.sup_only_epochs`) is over."""
  return epoch_of(config, step) >= config.schedule.sup_only_epochs


def shared_key(state, salt: int) -> jax.Array:
  """A key of this step that is the same on every device (the step's own keys differ per
  device): for choices every device must make alike, e.g. over gathered pixels."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  # Past any device index, so never one of the step's per-device keys.
  return jax.random.fold_in(key, 0x7FFF0000 + salt)


def supervised_loss(tools: Tools, params, inputs: StepInputs, rng):
  """Cross-entropy of the student on the labeled images: the loss of warm-up steps."""
  batch = inputs.batch
  variables = {"params": params, "batch_stats": inputs.state.batch_stats}
  logits, stats = tools.run(variables, batch["labeled_image"], True, rng, None)
  sup = tools.ce(logits, batch["labeled_label"])
  return sup, (stats, {"loss_sup": sup})


def student_views(tools: Tools, params, inputs: StepInputs, rngs):
  """The student on [labeled, strong]: (u, v, logits, batch_stats) with clean (main) BN.

  `rngs` = (encoder key, classifier-block key): dropout of the two parts.
  """
  batch, targets = inputs.batch, inputs.targets
  x = jnp.concatenate([batch["labeled_image"], targets.image])
  u, stats = tools.run({"params": params, "batch_stats": inputs.state.batch_stats}, x, True,
                       rngs[0], "encode")
  v, stats = tools.run({"params": params, "batch_stats": stats}, u, True, rngs[1],
                       "features", False)
  logits = tools.model.apply({"params": params, "batch_stats": stats}, v, method="classify")
  return u, v, logits, stats


def labeled_loss(tools: Tools, logits, labels, kind: str = "ce", ohem_thresh: float = 0.7,
                 ohem_min_kept: int = 100_000, ohem_axis=None):
  """This device's share of the global mean supervised loss: cross-entropy ("ce") or
  OHEM ("ohem": pixels whose ground-truth probability is at most max(thresh, that of the
  min_kept-th hardest), the order statistic over `ohem_axis`'s devices, or per device
  with None as the releases). Logits resized (bilinear) to the labels."""
  if kind != "ohem":
    return tools.ce(logits, labels)
  total, count = ohem_cross_entropy_sum(resize_bilinear(logits, labels.shape[1:3]), labels,
                                        ohem_thresh, ohem_min_kept,
                                        tools.config.data.ignore_label, ohem_axis)
  return global_mean(total, count, tools.axis_name)


def gather_in_order(x, n_l: int, axis):
  """x = [labeled (n_l), unlabeled] per device -> [every device's labeled, every
  device's unlabeled]: the order one device holding the whole batch sees."""
  g = lambda part: jax.lax.all_gather(part, axis, tiled=True)
  return jnp.concatenate([g(x[:n_l]), g(x[n_l:])])
