"""Several domains in one run: per-domain configs and the merged training batch."""
import numpy as np
import pytest

from configs import base
from ddfp_jax.data import domains
from ddfp_jax.data import errors
from ddfp_jax.data import pipeline

NIGHT = {"demo_domain": "night", "num_classes": 6}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = base.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.data.demo_image_size = 48
  c.data.demo_labeled = 4
  c.data.demo_unlabeled = 8
  c.data.demo_validation = 2
  c.data.crop_size = 32
  c.data.labeled_per_device = 2
  c.data.unlabeled_per_device = 2
  c.steps_per_epoch = 2
  return c


def test_domain_config_changes_only_its_data_keys(config):
  night = domains.domain_config(config, NIGHT)
  assert (night.data.demo_domain, night.data.num_classes) == ("night", 6)
  assert (config.data.demo_domain, config.data.num_classes) == ("day", 11)  # untouched
  assert night.data.crop_size == config.data.crop_size and night.seed == config.seed
  with pytest.raises(errors.DatasetError, match="'num_clases'.*config.data does not"):
    domains.domain_config(config, {"num_clases": 6})


def test_merged_batch_holds_each_domains_own_batch_under_its_name(config):
  configs = {"day": domains.domain_config(config, {}),
             "night": domains.domain_config(config, NIGHT)}
  for c in configs.values():
    pipeline.prepare(c)
  kwargs = dict(start_step=1, local_device_count=1)
  merged = domains.MergedBatches(
      {d: pipeline.train_batches(c, **kwargs) for d, c in configs.items()})
  got = [next(merged) for _ in range(2)]
  for name, c in configs.items():
    with pipeline.train_batches(c, **kwargs) as alone:
      for batch in got:
        want = next(alone)
        assert {k for k in batch if k.startswith(name + "/")} == {
            domains.domain_key(name, k) for k in want}
        for key, value in want.items():
          np.testing.assert_array_equal(batch[domains.domain_key(name, key)], value)
  night_labels = got[0]["night/labeled_label"]
  assert set(np.unique(night_labels).tolist()) <= set(range(6)) | {255}
  assert not np.array_equal(got[0]["day/labeled_image"], got[0]["night/labeled_image"])
  merged.close()
  with pytest.raises(StopIteration):   # every domain's iterator is closed
    next(merged)
