"""Tiny configs, synthetic batches and tree comparisons shared by the step and trainer tests."""
import jax
import numpy as np

from configs import demo


# Keys where the tests keep the setting they were written for, whatever configs/demo.py
# chooses for its own runs: the release's perturbation site (several tests exercise its
# auxiliary-BN pass), output stride 16 (cheaper to compile), the paper's eps and EMA, the
# base augmentation, momentum SGD at 0.05.
PINNED = {
    "optim.name": "sgd", "optim.learning_rate": 0.05,
    "semi.site": "classifier_input", "model.output_stride": 16, "ddfp.eps": 4.0,
    "random.eps": 4.0, "vat.eps": 4.0, "semi.ema_decay": 0.999,
    "data.scale_range": (0.5, 2.0), "data.flip_prob": 0.5, "data.demo_labeled": 40,
    "data.demo_unlabeled": 1000,
    "train.num_images": 0,   # the picture test turns them on (tests/training/test_visuals.py)
}
# The tiny model and schedule every test uses.
TINY = {
    **PINNED, "total_steps": 12, "steps_per_epoch": 2,   # epochs: 0 warm-up, 1 flow, 2+ DDFP
    "data.num_classes": 5, "data.crop_size": 32, "data.labeled_per_device": 2,
    "data.unlabeled_per_device": 2, "model.width": 1 / 16, "model.aspp_rates": (1, 2, 3),
    "ddfp.flow.hidden": 16, "ddfp.flow.num_samples": 64,
    "semi.threshold": 0.2,          # untrained 5-class model: keep pseudo labels
}
# TINY's 5 classes suit the synthetic batches; a config that goes through the config
# check (which compares the class count with the dataset's) needs the demo's 11.
DEMO_CLASSES = {"data.num_classes": 11}
# A small demo set (the CLI tests prepare it in their data_dir).
SMALL_DEMO_SET = {
    "data.num_classes": 11, "data.demo_image_size": 48, "data.demo_labeled": 8,
    "data.demo_unlabeled": 16, "data.demo_validation": 6, "data.eval_per_device": 2,
}


def tiny_config(**overrides):
  """configs/demo.py with TINY and then `overrides` ("a.b" keys) applied."""
  config = demo.get_config()
  for key, value in {**TINY, **overrides}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def as_flags(flat):
  """`--config.KEY=VALUE` flags that give configs/demo.py the same values as
  tiny_config(**flat): TINY first, then `flat`."""
  flags = []
  for key, value in {**TINY, **flat}.items():
    if isinstance(value, tuple):
      value = "(" + ",".join(map(str, value)) + ")"
    flags.append(f"--config.{key}={value}")
  return flags


def demo_cli_overrides(data_dir, total_steps: int = 2):
  """Flags that make configs/demo.py a tiny run of `total_steps` one-step epochs on a small
  demo set in `data_dir` (CLI and harness tests)."""
  return as_flags({**SMALL_DEMO_SET, "total_steps": total_steps, "steps_per_epoch": 1,
                   "data.data_dir": data_dir, "data.crop_size": 32})


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
