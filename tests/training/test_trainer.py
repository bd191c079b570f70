"""Trainer: exact resume, non-finite stop, config errors, dataset preparation in a
multi-process run (main.py itself: tests/training/test_cli.py)."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from ddfp_jax.training import trainer
from ddfp_jax.training.checkpoint import Checkpointer
from ddfp_jax.config.check import ConfigError, check_config
from ddfp_jax.data.errors import DatasetError
from ddfp_jax.training.state import create_train_state
from tiny import DEMO_CLASSES, tiny_config



def demo_config(data_dir, **overrides):
  """The tiny model on a small demo set: steps 0 warm-up, 1 flow, 2-3 DDFP."""
  base = {
      "total_steps": 4, "steps_per_epoch": 1, "data.num_classes": 11,
      "data.data_dir": str(data_dir), "data.demo_image_size": 48, "data.demo_labeled": 8,
      "data.demo_unlabeled": 16, "data.demo_validation": 6, "data.eval_per_device": 2,
      "train.eval_every": 1000, "train.checkpoint_every": 2, "train.log_every": 1,
  }
  base.update(overrides)
  return tiny_config(**base)


def _restore(config, workdir, step):
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    return ckpt.restore(create_train_state(config, jax.random.key(0)), step)


def _assert_identical(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
  # With the flow's FlowGMM classification evaluated too (the same phases either way:
  # DDFP trains the flow anyway), so that one pair of runs checks both.
  config = demo_config(tmp_path / "tfds", **{"ddfp.eval_flow": True})
  straight = str(tmp_path / "straight")
  results = trainer.train_and_evaluate(config, straight)
  assert 0.0 <= results["teacher/miou"] <= 1.0 and 0.0 <= results["student/miou"] <= 1.0
  assert 0.0 <= results["teacher/flow_miou"] <= 1.0
  assert results["teacher/flow_per_class_iou"].shape == (11,)
  assert "student/flow_miou" not in results   # FlowGMM scores the teacher's features

  # A run stopped at step 2 leaves exactly the checkpoint the straight run wrote there
  # (the runs are deterministic; stopping with train.steps_this_run is tested through
  # main.py in test_multiprocess.py): start from a copy of it, with the same command.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(straight, "checkpoints", "latest", "2"),
                  os.path.join(resumed, "checkpoints", "latest", "2"))
  results_resumed = trainer.train_and_evaluate(config, resumed)

  # The same final state (teacher, flow, optimisers, RNG) and the same final evaluation.
  _assert_identical(_restore(config, straight, 4), _restore(config, resumed, 4))
  assert results_resumed["teacher/miou"] == results["teacher/miou"]
  assert results_resumed["student/miou"] == results["student/miou"]
  assert results_resumed["teacher/flow_miou"] == results["teacher/flow_miou"]
  with open(os.path.join(resumed, trainer.RUN_INFO)) as f:
    assert json.load(f)["start_step"] == 2
  # model.atrous_impl = "auto" (the default) resolved and recorded: the CPU's known form.
  assert config.model.atrous_impl == "auto"
  with open(os.path.join(straight, "atrous_impl.json")) as f:
    assert json.load(f) == {"impl": "dilated", "backend": "cpu",
                            "how": "known for the backend", "timings_ms": {}}


def test_nonfinite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
  config = demo_config(tmp_path / "tfds", **{
      "optim.learning_rate": 1e12, "train.checkpoint_every": 1, "total_steps": 6,
      "steps_per_epoch": 3})
  workdir = str(tmp_path / "run")
  with pytest.raises(trainer.NonFiniteError, match="not finite") as err:
    trainer.train_and_evaluate(config, workdir)
  message = str(err.value)
  assert "Training stopped at step" in message and "learning rate" in message
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    last = ckpt.latest_step()
  assert last is not None and f"step {last}" in message
  state = _restore(config, workdir, last)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state)
             if np.asarray(x).dtype.kind == "f")


def test_config_check_names_missing_unknown_and_mistyped_keys():
  config = tiny_config(**DEMO_CLASSES)
  check_config(config)
  config.unlock()
  del config.ddfp["eps"]
  config.model.dept = 50
  config.ddfp.vat_xi = 1e-6       # a key of an earlier version
  del config.ddfp.flow["hidden"]   # a config file that rebuilds a field with the wrong type
  config.ddfp.flow.hidden = "wide"
  with pytest.raises(ConfigError) as err:
    check_config(config)
  message = str(err.value)
  assert "missing key(s) ddfp.eps" in message
  assert "unknown key 'model.dept' (did you mean 'model.depth'?)" in message
  assert "'ddfp.flow.hidden' should be a int" in message
  assert "unknown key 'ddfp.vat_xi' (replaced by vat.xi)" in message


def _as_process(monkeypatch, index, told=None):
  """This process as process `index` of 2; process 0's broadcast value is `told` for the
  others. Returns the values this process broadcasts."""
  sent = []
  monkeypatch.setattr(jax, "process_index", lambda: index)
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def broadcast(value):
    sent.append(int(value))
    return np.int32(value if index == 0 else told)
  monkeypatch.setattr(trainer.multihost_utils, "broadcast_one_to_all", broadcast)
  return sent


def test_a_dataset_process_0_cannot_prepare_stops_every_process(tmp_path, monkeypatch):
  # Cityscapes, not prepared in data_dir and no manual_dir: preparing it fails.
  config = tiny_config(**{"data.name": "cityscapes", "data.data_dir": str(tmp_path)})
  # Process 0 tells the others, then raises its own error.
  sent = _as_process(monkeypatch, 0)
  with pytest.raises(DatasetError, match="needs the prepared TFDS files of cityscapes"):
    trainer._prepare_data(config)
  assert sent == [0]
  # Another process does not prepare (that would raise the error above): it raises
  # an error pointing at process 0's log, or goes on when process 0 succeeded.
  sent = _as_process(monkeypatch, 1, told=0)
  with pytest.raises(DatasetError) as err:
    trainer._prepare_data(config)
  assert str(err.value) == ("process 0 could not prepare the dataset 'cityscapes', so "
                            "process 1 of 2 stops too; the cause is in process 0's log.")
  assert sent == [1]
  _as_process(monkeypatch, 1, told=1)
  trainer._prepare_data(config)
