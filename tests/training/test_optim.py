"""The student's optimiser: the first update of each choice against its closed form."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models import multi_domain as md
from ddfp_jax.models.deeplab import DeepLabV3Plus
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


@pytest.mark.parametrize("encoder", ["deeplab", "drn"])
def test_multi_domain_model_trunk_takes_the_backbone_lr_and_its_heads_the_decoders(encoder):
  """USSS's model wraps the trunk one or two levels down (models/param_groups.py): each
  leaf's first SGD update is -lr (g + wd p) with its group's lr, the groups named here
  from the model's layout."""
  if encoder == "drn":
    trunk = md.build_encoder("drn", drn_depth=22, width=1 / 16)
  else:
    trunk = md.build_encoder("deeplab", deeplab=DeepLabV3Plus(
        num_classes=1, depth=18, width=1 / 16, output_stride=16, aspp_rates=(1, 2, 3),
        mixed_bn=False))
  model = md.MultiDomainSegmenter(trunk, num_classes=(3, 2), embedding_dim=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False)["params"]
  config = tiny_config(**{"optim.name": "sgd", "optim.learning_rate": 0.1,
                          "optim.weight_decay": 0.01, "optim.decoder_lr_mult": 10.0,
                          "optim.lr_scaling": "none"})
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.student_optimizer(config)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat_p = flax.traverse_util.flatten_dict(params)
  flat_u = flax.traverse_util.flatten_dict(updates)
  groups = {"trunk": 0, "new": 0}
  for path, p in flat_p.items():
    if path[0] == "encoder" and (encoder == "drn" or path[2] == "backbone"):
      lr, group = 0.1, "trunk"
    else:   # heads, embedding head, and DeepLabV3+'s ASPP / decoder / classifier block
      lr, group = 1.0, "new"
    groups[group] += 1
    np.testing.assert_allclose(flat_u[path], -lr * (1.0 + 0.01 * np.asarray(p)),
                               rtol=1e-5, atol=1e-7, err_msg=str(path))
  assert groups["trunk"] > 0 and groups["new"] >= 6   # 2 heads + embedding, kernel + bias
