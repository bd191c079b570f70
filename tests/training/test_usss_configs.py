"""USSS's pair configs: the release's settings (spec sections 4, 5, 7) written out here,
every variant, the per-dataset paths from the command line, and the fine-tuning
variant's refusal to start without the run it fine-tunes."""
import importlib
import math

import pytest

from ddfp_jax.config import loading
from ddfp_jax.config.check import ConfigError, check_config
from ddfp_jax.data import domains

CELLS = {"cityscapes_camvid_50": ("cityscapes", "camvid", 50),
         "cityscapes_camvid_100": ("cityscapes", "camvid", 100),
         "cityscapes_camvid_300": ("cityscapes", "camvid", 300),
         "cityscapes_idd_100": ("cityscapes", "idd", 100),
         "cityscapes_idd_300": ("cityscapes", "idd", 300),
         "cityscapes_sunrgbd_100": ("cityscapes", "sunrgbd", 100)}
CLASSES = {"cityscapes": 19, "camvid": 11, "idd": 26, "sunrgbd": 37}
# (alpha, beta, label embeddings, stage-1 epochs) of the two-domain variants.
TWO_DOMAIN = {"usss": (1.0, 1.0, "centroids", 100), "random": (1.0, 1.0, "random", 0),
              "cross": (1.0, 0.0, "random", 0), "joint": (0.0, 0.0, "random", 0)}


def _load(name, variant):
  return importlib.import_module(f"configs.usss.{name}").get_config(variant)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_each_pair_has_every_variant_with_the_release_settings(name):
  a, b, n = CELLS[name]
  steps_per_epoch = math.ceil(n / 8)
  for variant, (alpha, beta, source, stage1) in TWO_DOMAIN.items():
    config = _load(name, variant)
    check_config(config)
    assert config.method == "usss" and config.usss.domains == f"{a},{b}"
    assert (config.usss.alpha, config.usss.beta, config.usss.label_embeddings) == (
        alpha, beta, source)
    assert config.steps_per_epoch == steps_per_epoch
    assert config.total_steps == (200 + stage1) * steps_per_epoch
    assert config.schedule.sup_only_epochs == stage1
    assert (config.optim.name, config.optim.learning_rate, config.optim.momentum,
            config.optim.weight_decay) == ("sgd", 0.001, 0.9, 1e-4)
    assert config.usss.encoder == "drn" and config.usss.embedding_dim == 100
    each = domains.domain_configs(config)
    assert list(each) == [a, b]
    for d, c in each.items():
      assert (c.data.name, c.data.num_classes, c.data.num_labeled) == (d, CLASSES[d], n)
    # 8 labeled images of each dataset per step on 4 devices.
    assert config.data.labeled_per_device * 4 == 8
  for d in (a, b):
    single = _load(name, d)
    check_config(single)
    assert single.usss.domains == d and single.usss.alpha == single.usss.beta == 0
    assert single.total_steps == 200 * steps_per_epoch
  with pytest.raises(ValueError, match="take one of usss, random"):
    _load(name, "univ_full")


def test_halved_datasets_are_scored_at_the_training_resolution():
  each = domains.domain_configs(_load("cityscapes_idd_100", "joint"))
  for c in each.values():
    assert tuple(c.data.scale_range) == (0.5, 0.5) and c.data.eval_scale == 0.5
    assert c.data.crop_size == 512
  camvid = domains.domain_configs(_load("cityscapes_camvid_50", "joint"))["camvid"]
  assert tuple(camvid.data.scale_range) == (1.0, 1.0) and camvid.data.eval_scale == 1.0


def test_paths_per_dataset_come_from_the_command_line():
  config = loading.load("configs/usss/cityscapes_camvid_100.py:joint", [
      "--config.data.data_dir=/tfds", "--config.usss.domain_data.cityscapes.manual_dir=/cs",
      "--config.usss.domain_data.camvid.manual_dir=/cv"])
  each = domains.domain_configs(config)
  assert each["cityscapes"].data.manual_dir == "/cs" and each["camvid"].data.manual_dir == "/cv"
  assert each["cityscapes"].data.data_dir == each["camvid"].data.data_dir == "/tfds"
  # A dataset whose path is left unset keeps the run's (here none).
  unset = loading.load("configs/usss/cityscapes_camvid_100.py:joint")
  assert domains.domain_configs(unset)["camvid"].data.manual_dir is None


def test_fine_tuning_needs_the_run_it_starts_from():
  config = _load("cityscapes_camvid_100", "finetune_camvid")
  assert config.usss.domains == "camvid" and config.usss.alpha == config.usss.beta == 0
  with pytest.raises(ConfigError, match=r"usss.init_from is not set: .*--config.usss.init_from=DIR"):
    check_config(config)
  given = loading.load("configs/usss/cityscapes_camvid_100.py:finetune_camvid",
                       ["--config.usss.init_from=/runs/cityscapes_100"])
  check_config(given)
  assert given.usss.init_from == "/runs/cityscapes_100"
