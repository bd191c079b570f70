"""Optimisers and learning-rate schedules of the student and the flow (optax).

Student: SGD, momentum 0.9, weight decay 1e-4 added to the gradient before momentum (as
PyTorch's SGD does, on every parameter), poly decay per step, and a larger LR for the
decoder (x10 on VOC in the release): every parameter outside the pretrained trunk
(`models.param_groups.is_backbone`). Flow: Adam(0.5, 0.9) after global-norm clipping at 50,
LR multiplied by final_lr_ratio^(1 / epochs) after every epoch (the release's StepLR).

Schedules are pure functions of the global step (the student updates on every step, so
optax's counter is the global step), and a resumed run continues on the same curve.
"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddfp_jax.models import param_groups


def global_labeled_batch(config: ml_collections.ConfigDict) -> int:
  """Labeled images per step over every device of the run."""
  return config.data.labeled_per_device * jax.device_count()


# optim.lr_scaling: "linear" scales the base LR with the global labeled batch over
# optim.reference_batch; "none" keeps it.
LR_SCALING_RULES = ("linear", "none")


def scaled_learning_rate(config: ml_collections.ConfigDict) -> float:
  """Base LR for this run's global batch (`optim.lr_scaling` in the config)."""
  rule = config.optim.lr_scaling
  if rule == "linear":
    return config.optim.learning_rate * global_labeled_batch(config) / config.optim.reference_batch
  if rule == "none":
    return config.optim.learning_rate
  raise ValueError(f"optim.lr_scaling must be 'linear' or 'none', got {rule!r}.")


def poly_schedule(base_lr: float, total_steps: int, power: float) -> optax.Schedule:
  def schedule(step):
    frac = jnp.clip(step / total_steps, 0.0, 1.0)
    return base_lr * (1.0 - frac) ** power
  return schedule


def student_schedule(config: ml_collections.ConfigDict,
                     lr_mult: float = 1.0) -> optax.Schedule:
  """The student's poly LR; `lr_mult` is the decoder's multiplier."""
  base_lr = scaled_learning_rate(config) * lr_mult
  return poly_schedule(base_lr, config.total_steps, config.optim.poly_power)


# optim.name: "sgd" (the papers': momentum SGD, L2 weight decay added to the gradient)
# or "adamw" (Adam with decoupled weight decay, optax.adamw: b1 = optim.momentum,
# b2 = 0.999; for models trained from scratch, such as the demo's).
OPTIMIZERS = ("sgd", "adamw")


def student_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Built once per train state (`TrainState.tx`), which the train step then uses."""
  optim = config.optim
  if optim.name not in OPTIMIZERS:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {optim.name!r}.")

  def group(lr_mult):
    schedule = student_schedule(config, lr_mult)
    if optim.name == "adamw":
      return optax.adamw(schedule, b1=optim.momentum, b2=0.999,
                         weight_decay=optim.weight_decay)
    return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                       optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))

  return optax.multi_transform(
      {"backbone": group(1.0), "decoder": group(optim.decoder_lr_mult)},
      lambda params: flax.traverse_util.path_aware_map(
          lambda path, _: "backbone" if param_groups.is_backbone(path) else "decoder",
          params))


def flow_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  epochs = max(config.total_steps // config.steps_per_epoch, 1)
  gamma = config.ddfp.flow.final_lr_ratio ** (1.0 / epochs)

  def schedule(step):
    return config.ddfp.flow.learning_rate * gamma ** (step // config.steps_per_epoch)
  return schedule


def flow_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipped Adam *direction*; the train step multiplies it by `flow_schedule(step)`.

  The LR follows the global epoch (the release steps its scheduler every epoch, warm-up
  included), while optax's own counter would only count the flow's updates.
  """
  return optax.chain(
      optax.clip_by_global_norm(config.ddfp.flow.grad_clip),
      optax.scale_by_adam(b1=config.ddfp.flow.b1, b2=config.ddfp.flow.b2),
      optax.scale(-1.0),
  )
