"""model.atrous_impl = "auto" (ddfp_jax/models/atrous_choice.py): the known form on a
measured backend, the fastest timed form elsewhere, and the model built with it."""
import jax
import pytest

from ddfp_jax.config.check import ConfigError, check_config
from ddfp_jax.models import atrous_choice, builders, layers
from tiny import DEMO_CLASSES, tiny_config


def test_auto_on_the_cpu_is_the_measured_form_and_a_given_form_is_kept():
  config = tiny_config(**{"model.atrous_impl": "auto"})
  choice = atrous_choice.resolve(config)
  assert (choice.impl, choice.backend, choice.how) == ("dilated", "cpu",
                                                       "known for the backend")
  assert builders.build_model(config).atrous_impl == "dilated"
  shifted = tiny_config(**{"model.atrous_impl": "shifted"})
  assert atrous_choice.resolve(shifted) == atrous_choice.Choice("shifted", "cpu", "given")
  assert builders.build_model(shifted).atrous_impl == "shifted"


def test_a_backend_not_measured_times_every_form_and_takes_the_fastest(monkeypatch):
  """A made-up backend name stands for a new accelerator: the forms are timed on this
  process's device (the CPU here), the smallest median wins, and the choice is cached."""
  calls = []
  real = atrous_choice.time_forms

  def counted(*args, **kwargs):
    calls.append(args)
    return real(*args, **kwargs)
  monkeypatch.setattr(atrous_choice, "time_forms", counted)
  atrous_choice.choose.cache_clear()
  config = tiny_config(**{"model.atrous_impl": "auto", "data.crop_size": 32})
  choice = atrous_choice.resolve(config, backend="new-accelerator")
  timings = dict(choice.timings_ms)
  assert set(timings) == set(layers.ATROUS_IMPLS) and min(timings.values()) > 0
  assert choice.how == "timed" and choice.impl == min(timings, key=timings.get)
  # One device's batch (2 + 2), the stride-16 map of the 32 crop, ResNet-18's last stage
  # at width 1/16, ASPP's features at that width, the config's rates.
  assert calls == [(4, 2, layers.scaled(512, 1 / 16), layers.scaled(256, 1 / 16),
                    (1, 2, 3), jax.numpy.dtype("float32"))]
  assert atrous_choice.resolve(config, backend="new-accelerator") == choice
  assert len(calls) == 1
  assert choice.impl in choice.describe() and "timed" in choice.describe()
  atrous_choice.choose.cache_clear()


def test_unknown_form_is_refused_by_the_config_check():
  with pytest.raises(ConfigError, match="atrous_impl"):
    check_config(tiny_config(**DEMO_CLASSES, **{"model.atrous_impl": "winograd"}))
