"""Tiny configs, synthetic batches and tree comparisons shared by the step and trainer tests."""
import jax
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
  config.ddfp.flow.hidden = 16
  config.ddfp.flow.num_samples = 64
  config.semi.threshold = 0.2         # untrained 5-class model: keep pseudo labels
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def demo_cli_overrides(data_dir, total_steps: int = 2):
  """`--config.KEY=VALUE` flags that make configs/demo.py a tiny run of `total_steps`
  one-step epochs on a small demo set in `data_dir` (CLI and harness tests)."""
  config = tiny_config()
  flat = {"total_steps": total_steps, "steps_per_epoch": 1, "data.num_classes": 11,
          "data.data_dir": data_dir, "data.demo_image_size": 48, "data.demo_labeled": 8,
          "data.demo_unlabeled": 16, "data.demo_validation": 6, "data.eval_per_device": 2,
          "data.crop_size": 32, "data.labeled_per_device": 2, "data.unlabeled_per_device": 2,
          "model.width": config.model.width, "model.aspp_rates": "(1,2,3)",
          "ddfp.flow.hidden": 16, "ddfp.flow.num_samples": 64, "semi.threshold": 0.2}
  return [f"--config.{k}={v}" for k, v in flat.items()]


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


def leaves(tree):
  """The leaves of `tree` as NumPy arrays."""
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def max_abs_diff(a, b) -> float:
  """The largest absolute difference between matching leaves of two trees (0 for none)."""
  return max((float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b))),
             default=0.0)
