"""The methods of the framework, by the name `config.method` gives.

Each is a `ddfp_jax.methods.interface.Method`; a method added here gets the shared train
step, the trainer, checkpoints, evaluation and the method contract test
(tests/methods/test_method_contract.py) by being in this dict.
"""
from ddfp_jax.methods import css, ddfp, dgcl, feature_perturbation, fixmatch, supervised, usss

METHODS = {
    "supervised": supervised.METHOD,
    "fixmatch": fixmatch.METHOD,
    "random": feature_perturbation.RANDOM,
    "cct_noise": feature_perturbation.CCT_NOISE,
    "channel_dropout": feature_perturbation.CHANNEL_DROPOUT,
    "vat": feature_perturbation.VAT,
    "ddfp": ddfp.METHOD,
    "dgcl": dgcl.METHOD,
    "css": css.METHOD,
    "usss": usss.METHOD,
}


def get_method(name: str):
  """The method called `name`; ValueError naming the choices otherwise."""
  if name not in METHODS:
    raise ValueError(f"config.method {name!r} is not a method of this framework; choose one "
                     f"of {', '.join(METHODS)}.")
  return METHODS[name]
