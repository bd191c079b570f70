"""`config.preset`: "custom" keeps the three paper-vs-release switches, "paper" and
"release" set them, where the run's config is resolved."""
import glob
import importlib.util
import logging
import os

import pytest

from configs import base
from ddfp_jax.config import presets
from ddfp_jax.training import trainer
from ddfp_jax.config.check import ConfigError, check_config
from tiny import DEMO_CLASSES, tiny_config
import paths

REPO = str(paths.REPO)
PAPER = {"semi.teacher": "ema", "semi.teacher_train_mode": False, "semi.site": "feature"}
RELEASE = {"semi.teacher": "shared", "semi.teacher_train_mode": True,
           "semi.site": "classifier_input"}


def _switches(config):
  return {"semi.teacher": config.semi.teacher,
          "semi.teacher_train_mode": config.semi.teacher_train_mode,
          "semi.site": config.semi.site}


def _config_files():
  """(name relative to configs/, config) of every config file (a module with
  get_config; configs/datasets.py and the tables modules are helpers)."""
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))
                     + glob.glob(os.path.join(REPO, "configs", "*", "*.py"))):
    name = os.path.relpath(path, os.path.join(REPO, "configs"))[:-3]
    spec = importlib.util.spec_from_file_location(f"configs_{name.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if name != "base" and hasattr(module, "get_config"):
      yield name, module.get_config()


# CSS's: an EMA teacher in train mode, as its release runs it (the paper does not say;
# configs/css/tables.py).
CSS = {"semi.teacher": "ema", "semi.teacher_train_mode": True, "semi.site": "feature"}
# DGCL's release teacher rule, which its configs set (configs/dgcl/tables.py).
DGCL = {"semi.teacher": "shared_first_epoch", "semi.teacher_train_mode": True,
        "semi.site": "feature"}


def test_default_is_custom_with_the_papers_switches():
  config = base.get_config()
  assert config.preset == "custom" and _switches(config) == PAPER
  assert presets.PRESETS == {"paper": PAPER, "release": RELEASE}
  # Every shipped config keeps the switches it sets: the paper's, but DGCL's and CSS's
  # teacher rules in their configs.
  names = []
  for name, config in _config_files():
    names.append(name)
    assert config.preset == "custom", name
    want = DGCL if name.startswith("dgcl/") else CSS if name.startswith("css/") else PAPER
    assert _switches(config) == want, name
    assert presets.apply_preset(config) is config
  assert {"demo", "ddfp/pascal_732", "ddfp/cityscapes_1_4", "dgcl/pascal_732"} <= set(names)


@pytest.mark.parametrize("name,want", [("paper", PAPER), ("release", RELEASE)])
def test_preset_sets_the_three_switches_and_nothing_else(name, want):
  for start in (PAPER, RELEASE):
    config = tiny_config(preset=name, **start)
    config.lock()
    resolved = presets.apply_preset(config)
    assert _switches(resolved) == want
    assert _switches(config) == start            # the given config is not changed
    assert presets.apply_preset(resolved).to_dict() == resolved.to_dict()   # idempotent
    others = lambda c: {k: v for k, v in c.to_dict().items() if k != "semi"}
    assert others(resolved) == others(config)
    assert {k: v for k, v in resolved.semi.items() if f"semi.{k}" not in want} == {
        k: v for k, v in config.semi.items() if f"semi.{k}" not in want}


def test_preset_logs_what_it_set_and_warns_when_it_overrides_a_switch(caplog):
  caplog.set_level(logging.INFO)
  # The tests' tiny config pins the release's site; the paper preset overrides it, with a
  # warning.
  config = tiny_config(preset="paper")
  assert config.semi.site == "classifier_input"
  presets.apply_preset(config)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == ["preset 'paper' overrides semi.site='classifier_input' with "
                      "'feature' (a preset wins over the switches; --config.preset=custom "
                      "keeps them as given)."]
  infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert ("preset 'paper': semi.teacher='ema', semi.teacher_train_mode=False, "
          "semi.site='feature' (changed: semi.site 'classifier_input' -> 'feature').") in infos
  # On the base defaults the release preset changes all three, none set by the config.
  caplog.clear()
  config = base.get_config()
  config.preset = "release"
  presets.apply_preset(config)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]
  assert any("changed: semi.teacher 'ema' -> 'shared'" in r.getMessage()
             for r in caplog.records)


def test_unknown_preset_is_a_config_error():
  config = tiny_config(preset="relase", **DEMO_CLASSES)
  with pytest.raises(ConfigError, match="'preset' is 'relase', not one of 'custom', "
                     "'paper', 'release' \\(did you mean 'release'\\?\\)"):
    check_config(config)
  with pytest.raises(ValueError, match="preset must be one of"):
    presets.apply_preset(config)


def test_the_runs_config_has_the_preset_applied(monkeypatch):
  monkeypatch.setattr(trainer, "_prepare_data", lambda config: None)
  config = tiny_config(preset="release", **DEMO_CLASSES)
  assert _switches(trainer.ready_config(config)) == RELEASE
  custom = tiny_config(**DEMO_CLASSES)
  assert _switches(trainer.ready_config(custom)) == _switches(custom)
