"""The student's optimiser: the first update of each choice against its closed form."""
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.training import optim
from tiny import tiny_config


def _first_update(name, lr=0.1, wd=0.01, momentum=0.9, decoder_mult=10.0):
  config = tiny_config(**{"optim.name": name, "optim.learning_rate": lr,
                          "optim.weight_decay": wd, "optim.momentum": momentum,
                          "optim.decoder_lr_mult": decoder_mult, "optim.lr_scaling": "none"})
  params = {"backbone": {"w": jnp.array([1.0, -2.0, 0.5])},
            "decoder": {"w": jnp.array([3.0, 0.0])}}
  grads = {"backbone": {"w": jnp.array([0.2, 0.4, -1.0])},
           "decoder": {"w": jnp.array([-0.3, 2.0])}}
  tx = optim.student_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, grads, updates


def test_sgd_first_step_is_minus_lr_times_gradient_plus_l2():
  params, grads, updates = _first_update("sgd")
  for group, lr in (("backbone", 0.1), ("decoder", 1.0)):
    p, g = np.asarray(params[group]["w"]), np.asarray(grads[group]["w"])
    np.testing.assert_allclose(updates[group]["w"], -lr * (g + 0.01 * p), rtol=1e-6)


def test_adamw_first_step_is_minus_lr_times_sign_plus_decoupled_decay():
  """Bias-corrected Adam's first step is g / |g| per element; AdamW's decay is lr * wd * p."""
  params, grads, updates = _first_update("adamw")
  for group, lr in (("backbone", 0.1), ("decoder", 1.0)):
    p, g = np.asarray(params[group]["w"]), np.asarray(grads[group]["w"])
    np.testing.assert_allclose(updates[group]["w"], -lr * (np.sign(g) + 0.01 * p),
                               rtol=1e-5)


def test_unknown_optimizer_is_refused():
  with pytest.raises(ValueError, match="optim.name must be one of"):
    _first_update("lamb")
