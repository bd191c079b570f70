"""`config.preset`: "custom" keeps the three paper-vs-release switches, "paper" and
"release" set them, where the run's config is resolved."""
import glob
import importlib.util
import logging
import os

import pytest

from configs import base
from ddfp_jax import presets, trainer
from ddfp_jax.config_check import ConfigError, check_config
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = {"ddfp.teacher": "ema", "ddfp.teacher_train_mode": False, "ddfp.site": "feature"}
RELEASE = {"ddfp.teacher": "shared", "ddfp.teacher_train_mode": True,
           "ddfp.site": "classifier_input"}


def _switches(config):
  return {"ddfp.teacher": config.ddfp.teacher,
          "ddfp.teacher_train_mode": config.ddfp.teacher_train_mode,
          "ddfp.site": config.ddfp.site}


def _config_files():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "base", "tables"):
      continue
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield name, module.get_config()


def test_default_is_custom_with_the_papers_switches():
  config = base.get_config()
  assert config.preset == "custom" and _switches(config) == PAPER
  assert presets.PRESETS == {"paper": PAPER, "release": RELEASE}
  # Every shipped config keeps the switches it sets: the demo its release site, the
  # tables the paper's defaults.
  names = []
  for name, config in _config_files():
    names.append(name)
    assert config.preset == "custom", name
    assert presets.apply_preset(config) is config
  assert "demo" in names and "pascal_732" in names and "cityscapes_1_4" in names


@pytest.mark.parametrize("name,want", [("paper", PAPER), ("release", RELEASE)])
def test_preset_sets_the_three_switches_and_nothing_else(name, want):
  for start in (PAPER, RELEASE):
    config = tiny_config(preset=name, **start)
    config.lock()
    resolved = presets.apply_preset(config)
    assert _switches(resolved) == want
    assert _switches(config) == start            # the given config is not changed
    assert presets.apply_preset(resolved).to_dict() == resolved.to_dict()   # idempotent
    others = lambda c: {k: v for k, v in c.to_dict().items() if k != "ddfp"}
    assert others(resolved) == others(config)
    assert {k: v for k, v in resolved.ddfp.items() if f"ddfp.{k}" not in want} == {
        k: v for k, v in config.ddfp.items() if f"ddfp.{k}" not in want}


def test_preset_logs_what_it_set_and_warns_when_it_overrides_a_switch(caplog):
  caplog.set_level(logging.INFO)
  # The demo sets the release's site; the paper preset overrides it, with a warning.
  config = tiny_config(preset="paper")
  assert config.ddfp.site == "classifier_input"
  presets.apply_preset(config)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ["preset 'paper' overrides ddfp.site='classifier_input' with "
                      "'feature' (a preset wins over the switches; --config.preset=custom "
                      "keeps them as given)."]
  infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert ("preset 'paper': ddfp.teacher='ema', ddfp.teacher_train_mode=False, "
          "ddfp.site='feature' (changed: ddfp.site 'classifier_input' -> 'feature').") in infos
  # On the base defaults the release preset changes all three, none set by the config.
  caplog.clear()
  config = base.get_config()
  config.preset = "release"
  presets.apply_preset(config)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]
  assert any("changed: ddfp.teacher 'ema' -> 'shared'" in r.getMessage()
             for r in caplog.records)


def test_unknown_preset_is_a_config_error():
  config = tiny_config(preset="relase")
  with pytest.raises(ConfigError, match="preset 'relase' is unknown \\(did you mean "
                     "'release'\\?\\)"):
    check_config(config)
  with pytest.raises(ValueError, match="preset must be one of"):
    presets.apply_preset(config)


def test_the_runs_config_has_the_preset_applied(monkeypatch):
  monkeypatch.setattr(trainer, "_prepare_data", lambda config: None)
  config = tiny_config(preset="release")
  assert _switches(trainer._ready_config(config)) == RELEASE
  assert _switches(trainer._ready_config(tiny_config())) == _switches(tiny_config())
