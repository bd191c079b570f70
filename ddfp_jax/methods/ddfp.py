"""`ddfp`: density-descending feature perturbation (Wang et al., CVPR 2024).

A feature-perturbation method (`feature_perturbation.py`) whose perturbation is
delta = eps · g / ||g||_2 per pixel, g the gradient of the mean NLL of the confident
pixels' features under a normalizing flow with a Gaussian-mixture base. The flow is the
method's extra state (`TrainState.extra`: "flow_params" and its Adam state
"flow_opt_state"), trained online on noised teacher features (spec section 3, step 8):
labeled pixels under their class component, unlabeled pixels under the mixture, padding
dropped, up to `ddfp.flow.num_samples` pixels per device and step.

Phases: warm-up; the flow trains from `schedule.flow_start_epoch`; the perturbation from
the epoch after. `ddfp.eval_flow=True` trains the flow whenever the run is
semi-supervised and adds its FlowGMM classification of the teacher's features to the
evaluation ("teacher/flow_miou").
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddfp_jax.methods import common, feature_perturbation
from ddfp_jax.methods.interface import Method
from ddfp_jax.methods.perturbations import PerturbationConfig
from ddfp_jax.models import builders
from ddfp_jax.models.density import UNLABELED, sample_pixels
from ddfp_jax.models.resize import resize_nearest
from ddfp_jax.training import optim


class Phase(NamedTuple):
  semi: bool        # pseudo labels and consistency on the strong view
  train_flow: bool  # the flow's likelihood update
  perturb: bool     # the perturbed-feature branch


def config_block() -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict()
  block.eps = 4.0                     # norm of delta per pixel
  block.eval_flow = False             # FlowGMM classification of teacher features in eval
  block.flow = flow = ml_collections.ConfigDict()
  flow.num_blocks = 2
  flow.hidden = 256
  flow.clamp = 2.0
  flow.learn_means = True
  flow.num_samples = 20_480           # pixels per step the flow trains on
  flow.noise_std = 0.05               # Gaussian noise added to those features
  flow.learning_rate = 1e-3
  flow.b1 = 0.5
  flow.b2 = 0.9
  flow.grad_clip = 50.0
  flow.final_lr_ratio = 0.01          # LR x 0.01^(1/epochs) after every epoch
  return block


def phase_at(config, step: int) -> Phase:
  semi = common.semi_started(config, step)
  flow_start = max(config.schedule.flow_start_epoch, config.schedule.sup_only_epochs)
  train_flow = semi and common.epoch_of(config, step) >= flow_start
  perturbing = feature_perturbation.branch_started(config, step)
  return Phase(semi, train_flow, perturbing)


def init_extra(config, rng, feature_dim: int):
  density = builders.build_density(config)
  flow_params = jax.jit(lambda k: density.init(k, jnp.zeros((2, feature_dim))))(rng)
  return {"flow_params": flow_params,
          "flow_opt_state": optim.flow_optimizer(config).init(flow_params)}


def make_log_density(config):
  """log p(v) of pixel features under the flow of the extra state (the mixture)."""
  density = builders.build_density(config)
  return lambda extra, v: density.apply(extra["flow_params"], v, method="log_prob")


def make_loss(tools):
  perturbation = PerturbationConfig(kind="density_descending", eps=tools.config.ddfp.eps)
  return feature_perturbation.make_feature_loss(tools, perturbation,
                                                make_log_density(tools.config))


def make_flow_update(tools):
  """Adam step of the flow on up to `num_samples` noised teacher features per device."""
  config, axis = tools.config, tools.axis_name
  density = builders.build_density(config)
  flow_tx = optim.flow_optimizer(config)
  flow_lr = optim.flow_schedule(config)
  flow_cfg = config.ddfp.flow
  ignore = config.data.ignore_label

  def update(extra, inputs, rng):
    if not inputs.phase.train_flow:
      return extra, {}
    batch, features = inputs.batch, inputs.teacher.features
    grid = features.shape[1:3]
    labeled = resize_nearest(batch["labeled_label"], grid)
    padded = resize_nearest(batch["unlabeled_ignore"], grid) == ignore
    # Pseudo labels are not used by the flow: every real unlabeled pixel is "unlabeled".
    unlabeled = jnp.where(padded, ignore, UNLABELED)
    labels = jnp.concatenate([labeled, unlabeled]).reshape(-1)
    feats = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
    valid = (labels != ignore) & ((labels == UNLABELED) | (labels < config.data.num_classes))
    k_sample, k_noise = jax.random.split(rng)
    index, picked = sample_pixels(k_sample, valid, flow_cfg.num_samples)
    sample = feats[index] + flow_cfg.noise_std * jax.random.normal(
        k_noise, (index.shape[0], feats.shape[-1]))
    sample_labels = labels[index]
    count = jax.lax.psum(jnp.sum(picked.astype(jnp.float32)), axis)

    def nll(flow_params):
      # density.nll is the local mean; rescale to this device's share of the global mean.
      local = density.apply(flow_params, sample, sample_labels, picked, method="nll")
      return local * jnp.sum(picked.astype(jnp.float32)) / jnp.maximum(count, 1.0)

    params = extra["flow_params"]
    loss, grads = jax.value_and_grad(nll)(params)
    loss, grads = jax.lax.psum((loss, grads), axis)
    direction, opt_state = flow_tx.update(grads, extra["flow_opt_state"], params)
    lr = flow_lr(inputs.state.step)
    params = jax.tree.map(lambda p, d: p + lr * d, params, direction)
    metrics = {"loss_flow": loss, "flow_grad_norm": optax.global_norm(grads), "flow_lr": lr}
    return {"flow_params": params, "flow_opt_state": opt_state}, metrics
  return update


def flowgmm_head(density):
  """FlowGMM classification of features v by the flow in the extra state: the class
  whose mixture component scores phi(v) highest (in float32, as the flow trains)."""
  return lambda extra, v: density.apply(extra["flow_params"], v.astype(jnp.float32),
                                        method="class_logits")


def make_eval_heads(config):
  if not config.ddfp.eval_flow:
    return {}
  return {"flow": flowgmm_head(builders.build_density(config))}


METHOD = Method(
    config_block=config_block,
    phase_at=phase_at,
    make_loss=make_loss,
    teacher_features=lambda phase: phase.train_flow,
    init_extra=init_extra,
    make_extra_update=make_flow_update,
    make_eval_heads=make_eval_heads,
    make_log_density=make_log_density,
    check_config=feature_perturbation.check_site,
)
