"""A USSS run through the trainer: both domains' data prepared and merged, the three
stages in one command, each domain scored on its own validation set with its own head."""
import json
import os

import numpy as np

from ddfp_jax.training import trainer
from tiny import tiny_config


def test_two_domain_run_scores_each_domain_and_selects_by_their_mean(tmp_path):
  config = tiny_config(method="usss", **{
      "total_steps": 3, "steps_per_epoch": 1, "schedule.sup_only_epochs": 2,
      "usss.embedding_dim": 8, "data.num_classes": 11, "data.data_dir": str(tmp_path / "tfds"),
      "data.demo_image_size": 48, "data.demo_labeled": 4, "data.demo_unlabeled": 8,
      "data.demo_validation": 4, "data.eval_per_device": 1, "train.eval_every": 1000,
      "train.checkpoint_every": 3, "train.log_every": 1})
  workdir = str(tmp_path / "run")
  results = trainer.train_and_evaluate(config, workdir)
  assert results["student/day/per_class_iou"].shape == (11,)
  assert results["student/night/per_class_iou"].shape == (6,)
  np.testing.assert_allclose(results["student/miou"], np.mean(
      [results["student/day/miou"], results["student/night/miou"]]))
  assert not any(k.startswith("teacher/") for k in results)   # the teacher is the student
  with open(os.path.join(workdir, trainer.EVAL_HISTORY)) as f:
    record = json.loads(f.readlines()[-1])
  assert record["step"] == 3 and record["student/night/miou"] == results["student/night/miou"]
  # Each domain's own validation set: the night scenes are another TFDS dataset.
  built = sorted(n for n in os.listdir(tmp_path / "tfds" / "digit_scenes") if n[0] != ".")
  assert len(built) == 2 and built[1] == built[0] + "_night", built
  _fine_tuning_starts_from_the_run_but_its_heads(config, workdir, tmp_path)


def _fine_tuning_starts_from_the_run_but_its_heads(source_config, source_dir, tmp_path):
  """usss.init_from (the fine-tuning baseline): a night-only run starts from the two-domain
  run's latest student, every variable but its head; the head keeps its fresh init."""
  import flax
  import pytest
  from ddfp_jax.training import warm_start
  from ddfp_jax.training.checkpoint import Checkpointer
  from ddfp_jax.training.state import create_train_state
  import jax

  config = source_config.copy_and_resolve_references()
  config.usss.domains = "night"
  config.usss.alpha = 0.0
  config.usss.init_from = source_dir
  config.seed = 5
  fresh = create_train_state(config, jax.random.key(config.seed))
  state = warm_start.from_run(fresh, source_dir)
  with Checkpointer(os.path.join(source_dir, "checkpoints"), read_only=True) as c:
    saved = c.restore_as_saved()
  flat = lambda t: flax.traverse_util.flatten_dict(flax.core.unfreeze(t))
  got, init, want = flat(state.params), flat(fresh.params), flat(saved["params"])
  # Heads are named by position: the night run's only head is head_0 (the day head's
  # name in the source, with 12 classes, not 7).
  assert {k[0] for k in got if k[0].startswith("head_")} == {"head_0"}
  for k, v in got.items():
    if k[0] == "head_0":
      np.testing.assert_array_equal(v, init[k])             # fresh: another label space
    else:
      np.testing.assert_array_equal(v, want[k])
      assert not np.array_equal(v, init[k]) or k[-1] in ("bias", "scale"), k
  stats = flat(saved["batch_stats"])
  for k, v in flat(state.batch_stats).items():
    np.testing.assert_array_equal(v, stats[k])
  for k, v in flat(state.teacher_params).items():    # the teacher: a copy
    np.testing.assert_array_equal(v, got[k])
  # A directory without checkpoints, and a run whose encoder differs, are refused.
  with pytest.raises(warm_start.WarmStartError, match="holds no checkpoints"):
    warm_start.from_run(fresh, str(tmp_path / "nowhere"))
  # The trainer starts a new run through it (and stops before any step).
  config.usss.init_from = str(tmp_path / "nowhere")
  with pytest.raises(warm_start.WarmStartError, match="holds no checkpoints"):
    trainer.train_and_evaluate(config, str(tmp_path / "fine_tuned"))
  assert not os.path.isdir(tmp_path / "fine_tuned" / "checkpoints" / "latest" / "0")
  wider = config.copy_and_resolve_references()
  wider.usss.embedding_dim = 4
  other = create_train_state(wider, jax.random.key(0))
  with pytest.raises(warm_start.WarmStartError, match=r"wrong shape: .*embedding"):
    warm_start.from_run(other, source_dir)
