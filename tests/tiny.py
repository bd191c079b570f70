"""Tiny configs and synthetic batches shared by the train-step and trainer tests."""
import numpy as np

from configs import demo


def tiny_config(**overrides):
  config = demo.get_config()
  config.total_steps = 12
  config.steps_per_epoch = 2          # epochs: 0 warm-up, 1 flow, 2+ perturbation
  config.data.num_classes = 5
  config.data.crop_size = 32
  config.data.labeled_per_device = 2
  config.data.unlabeled_per_device = 2
  config.model.width = 1 / 16
  config.model.aspp_rates = (1, 2, 3)
  config.flow.hidden = 16
  config.flow.num_samples = 64
  config.ddfp.threshold = 0.2         # untrained 5-class model: keep pseudo labels
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def synthetic_batch(config, num_devices, seed=0):
  """A batch with a leading device axis, labels with ignored pixels, padded unlabeled."""
  rs = np.random.RandomState(seed)
  c = config.data.crop_size
  bl, bu = config.data.labeled_per_device, config.data.unlabeled_per_device
  k = config.data.num_classes
  labels = rs.randint(0, k, size=(num_devices, bl, c, c)).astype(np.int32)
  labels[:, :, :3] = 255
  ignore = np.zeros((num_devices, bu, c, c), np.int32)
  ignore[:, :, :, -5:] = 255
  return {
      "labeled_image": rs.randn(num_devices, bl, c, c, 3).astype(np.float32),
      "labeled_label": labels,
      "unlabeled_weak": rs.randn(num_devices, bu, c, c, 3).astype(np.float32),
      "unlabeled_strong": rs.randn(num_devices, bu, c, c, 3).astype(np.float32),
      "unlabeled_ignore": ignore,
  }
