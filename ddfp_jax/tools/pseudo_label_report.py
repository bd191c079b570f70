r"""How good would the teacher's pseudo labels be? Measured on labeled validation images.

  python -m ddfp_jax.tools.pseudo_label_report --config configs/demo.py --workdir DIR

Loads the latest checkpoint in DIR, runs the teacher (inference mode) on the validation
set, and reports, per class and for background vs the rest: the fraction of ground-truth
pixels whose confidence passes the threshold `semi.threshold` (coverage) and the accuracy
of those confident pixels. Semi-supervised consistency can only teach what confident
pseudo labels carry, so this says how much the unlabeled data can contribute.
"""
import json
import os

from absl import app, flags
from ml_collections import config_flags
import numpy as np

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def report(config, state) -> dict:
  """Coverage and accuracy of thresholded teacher predictions on validation."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.models import builders  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from ddfp_jax.models.resize import resize_bilinear  # pylint: disable=g-import-not-at-top

  model = builders.build_model(config)
  variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  k = config.data.num_classes

  @jax.jit
  def predict(images):
    logits = model.apply(variables, images, False)
    probs = jax.nn.softmax(resize_bilinear(logits, images.shape[1:3]), axis=-1)
    return probs.max(-1), probs.argmax(-1)

  total = np.zeros(k, np.int64)
  confident = np.zeros(k, np.int64)
  correct = np.zeros(k, np.int64)
  for batch in pipeline.eval_batches(config, local_device_count=1):
    conf, pred = (np.asarray(a) for a in predict(batch["image"][0]))
    label, valid = batch["label"][0], batch["valid"][0]
    keep = valid[:, None, None] & (label != config.data.ignore_label)
    sure = keep & (conf > config.semi.threshold)
    for c in range(k):
      is_c = label == c
      total[c] += np.sum(keep & is_c)
      confident[c] += np.sum(sure & is_c)
      correct[c] += np.sum(sure & is_c & (pred == c))

  def summary(mask):
    t, s, r = total[mask].sum(), confident[mask].sum(), correct[mask].sum()
    return {"pixels": int(t), "coverage": float(s / max(t, 1)),
            "accuracy_of_confident": float(r / max(s, 1))}

  background = np.arange(k) == 0
  return {
      "threshold": config.semi.threshold,
      "background": summary(background),
      "other_classes": summary(~background),
      "per_class": {c: summary(np.arange(k) == c) for c in range(k)},
  }


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.state import create_train_state  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  with Checkpointer(os.path.join(FLAGS.workdir, "checkpoints")) as ckpt:
    if ckpt.latest_step() is None:
      raise SystemExit(f"error: no checkpoint in {FLAGS.workdir}/checkpoints.")
    state = ckpt.restore(create_train_state(config, jax.random.key(config.seed)))
  result = report(config, state)
  result["step"] = int(state.step)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
