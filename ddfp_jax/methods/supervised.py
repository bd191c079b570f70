"""`supervised`: the student learns from the labeled images only (the paper's baseline).

With `data.all_labeled=True` every training image is labeled: the fully supervised upper
bound of a setting (a data switch, not a method).
"""
from ddfp_jax.methods import common
from ddfp_jax.methods.interface import Method, Phase


def phase_at(config, step: int) -> Phase:
  del config, step
  return Phase(semi=False)


def make_loss(tools):
  def loss(params, inputs, rng):
    return common.supervised_loss(tools, params, inputs, rng)
  return loss


METHOD = Method(phase_at=phase_at, make_loss=make_loss)
