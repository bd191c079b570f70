"""Checkpointer: exact round trips, pruning, best-by-metric, and recovery after a crash."""
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orbax.checkpoint as ocp

from ddfp_jax.training.checkpoint import CheckpointError, Checkpointer


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array
  extra: dict


def _state(seed: int) -> State:
  rng = np.random.RandomState(seed)
  params = {"conv": {"kernel": jnp.asarray(rng.randn(3, 3, 2, 4), jnp.float32),
                     "bias": jnp.asarray(rng.randn(4), jnp.float32)},
            "bn": {"scale": jnp.asarray(rng.randn(4), jnp.bfloat16)}}
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)
  opt_state = jax.tree.map(lambda x: x + seed, opt_state)
  return State(step=jnp.asarray(seed * 100, jnp.int32), params=params, opt_state=opt_state,
               rng=jax.random.key_data(jax.random.key(seed)),
               extra={"counts": np.arange(5, dtype=np.int64) * seed,
                      "host": np.asarray(rng.randn(2), np.float32)})


def _assert_identical(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    # Bit-for-bit, NaN payloads and signed zeros included.
    np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))


def _restored_step(ckpt, step=None):
  return int(ckpt.restore(_state(0), step=step).step)


def test_round_trip_is_bit_identical(tmp_path):
  state = _state(3)
  assert state.rng.dtype == jnp.uint32
  with Checkpointer(tmp_path, keep=2) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(300, state)
    ckpt.wait()
    assert ckpt.latest_step() == 300
    restored = ckpt.restore(_state(0))
  assert isinstance(restored, State)
  _assert_identical(restored, state)
  assert isinstance(restored.extra["counts"], np.ndarray)
  assert restored.params["bn"]["scale"].dtype == jnp.bfloat16


def test_restore_follows_target_sharding(tmp_path):
  state = _state(1)
  device = jax.local_devices()[1]
  target = jax.tree.map(lambda x: jax.device_put(x, device) if isinstance(x, jax.Array) else x,
                        _state(0))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    ckpt.wait()
    restored = ckpt.restore(target)
  assert restored.params["conv"]["kernel"].devices() == {device}
  _assert_identical(restored, state)


def test_keep_prunes_old_steps_and_specific_step_restores(tmp_path):
  with Checkpointer(tmp_path, keep=2) as ckpt:
    for seed in (1, 2, 3):
      ckpt.save(seed * 100, _state(seed))
    ckpt.wait()
    assert ckpt.all_steps() == [200, 300]
    assert sorted(os.listdir(tmp_path / "latest")) == ["200", "300"]
    assert _restored_step(ckpt) == 300
    _assert_identical(ckpt.restore(_state(0), step=200), _state(2))
    with pytest.raises(FileNotFoundError):
      ckpt.restore(_state(0), step=100)


def test_best_is_replaced_only_by_a_better_metric(tmp_path):
  with Checkpointer(tmp_path, keep=1) as ckpt:
    assert ckpt.best_step() is None and ckpt.best_metric is None
    assert ckpt.save_best(100, _state(1), 0.50)
    assert not ckpt.save_best(200, _state(2), 0.40)
    assert not ckpt.save_best(250, _state(2), 0.50)     # a tie keeps the older one
    assert not ckpt.save_best(260, _state(2), float("nan"))
    assert ckpt.save_best(300, _state(3), 0.61)
    ckpt.wait()
    assert ckpt.best_step() == 300 and ckpt.best_metric == pytest.approx(0.61)
    assert sorted(os.listdir(tmp_path / "best")) == ["300"]
    _assert_identical(ckpt.restore_best(_state(0)), _state(3))
  # A resumed run compares against the stored metric.
  with Checkpointer(tmp_path, keep=1) as ckpt:
    assert ckpt.best_metric == pytest.approx(0.61) and ckpt.best_step() == 300
    assert not ckpt.save_best(400, _state(4), 0.60)
    assert ckpt.save_best(500, _state(5), 0.70)
    ckpt.wait()
    assert ckpt.best_step() == 500
    _assert_identical(ckpt.restore_best(_state(0)), _state(5))
    # The best directory is separate from the latest ones.
    assert ckpt.latest_step() is None


def test_min_mode(tmp_path):
  with Checkpointer(tmp_path, best_mode="min") as ckpt:
    assert ckpt.save_best(1, _state(1), 2.0)
    assert not ckpt.save_best(2, _state(2), 3.0)
    assert ckpt.save_best(3, _state(3), 1.0)
    ckpt.wait()
    assert ckpt.best_step() == 3


def test_crash_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
  with Checkpointer(tmp_path, keep=3) as ckpt:
    ckpt.save(100, _state(1))
    ckpt.save(200, _state(2))
    ckpt.wait()
  # What a crash during the save of step 300 leaves behind: orbax's temporary directory,
  # only partly written (here a copy of a complete step with its array data removed).
  latest = tmp_path / "latest"
  partial = latest / "300.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(latest / "200", partial)
  for root, _, files in os.walk(partial):
    for name in files:
      if name not in ("_CHECKPOINT_METADATA",):
        os.remove(os.path.join(root, name))
  with Checkpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.latest_step() == 200
    _assert_identical(ckpt.restore(_state(0)), _state(2))
    # Opening the directory cleared the leftover, and step 300 can be written again.
    assert not partial.exists()
    assert ckpt.save(300, _state(3))
    ckpt.wait()
    assert ckpt.all_steps() == [100, 200, 300]
    _assert_identical(ckpt.restore(_state(0)), _state(3))


def test_restore_without_checkpoint_raises(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError):
      ckpt.restore(_state(0))
    with pytest.raises(FileNotFoundError):
      ckpt.restore_best(_state(0))


def _largest_data_file(step_dir) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
           if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep]
  return max(files, key=os.path.getsize)


def _overwrite_middle(path, n=64):
  """What a bad disk or a stray write does: bytes changed in place, the size unchanged."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x5a" * n)


def _big_state(seed):
  """A state whose largest array is stored uncompressible enough that an overwrite lands
  in its data (random floats)."""
  state = _state(seed)
  big = jnp.asarray(np.random.RandomState(seed).randn(256, 256), jnp.float32)
  return state.replace(extra=dict(state.extra, big=big))


def _save_big(directory, seeds, keep=2):
  """Steps 100 * seed of _big_state(seed), on disk."""
  with Checkpointer(directory, keep=keep) as ckpt:
    for seed in seeds:
      ckpt.save(seed * 100, _big_state(seed))
    ckpt.wait()


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(10)


def test_values_changed_on_disk_are_detected_not_restored(tmp_path):
  """Orbax decodes an overwritten data file into other numbers without complaint; the
  stored checksums catch it, naming the step and the array. With no other step, a resume
  stops and changes nothing."""
  _save_big(tmp_path, [1])
  _overwrite_middle(_largest_data_file(tmp_path / "latest" / "100"))
  with Checkpointer(tmp_path, keep=2) as ckpt:
    with pytest.raises(CheckpointError, match=r"step 100 .* is damaged: 1 of \d+ arrays .*"
                       r"\(first: extra/big\)"):
      ckpt.restore(_big_state(0))
    with pytest.raises(CheckpointError, match=r"No checkpoint .* can be restored: checkpoint "
                       r"step 100 .* is damaged.*Nothing was changed"):
      ckpt.restore_newest_intact(_big_state(0))
  assert os.listdir(tmp_path / "latest") == ["100"] and not (tmp_path / "damaged").exists()


def test_unreadable_step_names_the_step_and_the_cause(tmp_path):
  _save_big(tmp_path, [1])
  _truncate(_largest_data_file(tmp_path / "latest" / "100"))
  with Checkpointer(tmp_path, keep=2) as ckpt:
    with pytest.raises(CheckpointError, match=r"step 100 .* cannot be read: \w+Error: .*"):
      ckpt.restore(_big_state(0), step=100)


def test_resume_sets_damaged_steps_aside_and_uses_the_newest_intact_one(tmp_path):
  _save_big(tmp_path, [1, 2, 3], keep=3)
  _overwrite_middle(_largest_data_file(tmp_path / "latest" / "300"))
  _truncate(_largest_data_file(tmp_path / "latest" / "200"))
  with Checkpointer(tmp_path, keep=3) as ckpt:
    state, step, damaged = ckpt.restore_newest_intact(_big_state(0))
    assert step == 100
    _assert_identical(state, _big_state(1))
    assert [d.step for d in damaged] == [300, 200]
    assert "is damaged" in damaged[0].reason and "cannot be read" in damaged[1].reason
    # Nothing deleted: the damaged steps are kept under damaged/, out of orbax's listing,
    # so the resumed run can write those steps again.
    assert sorted(os.listdir(tmp_path / "damaged")) == ["200", "300"]
    assert ckpt.all_steps() == [100]
    assert ckpt.save(200, _big_state(5))
    ckpt.wait()
    _assert_identical(ckpt.restore(_big_state(0)), _big_state(5))


def test_steps_saved_without_checksums_still_restore(tmp_path):
  """Checkpoints from before the checksums: restored as they are."""
  manager = ocp.CheckpointManager(str(tmp_path / "latest"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(100, args=ocp.args.StandardSave(flax.serialization.to_state_dict(_state(1))))
  manager.wait_until_finished()
  manager.close()
  with Checkpointer(tmp_path) as ckpt:
    _assert_identical(ckpt.restore(_state(0)), _state(1))
