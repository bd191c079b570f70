"""DGCL wired into the step: the teacher's two label sets against NumPy, the memory's
update over devices, the contrastive weight and the release's gradient scale.

The building blocks (density, selection, loss, ring buffer) are tested against
references in test_density_contrast.py; the method contract (compile once, 1 vs 2
devices, resume) in test_method_contract.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.methods import class_memory, dgcl
from ddfp_jax.methods.interface import StepInputs, Targets
from ddfp_jax.training.state import create_train_state
from ddfp_jax.training.step import AXIS, make_tools, replicate
from tiny import leaves, synthetic_batch, tiny_config

SETTINGS = {
    "method": "dgcl", "model.projection_dim": 8, "dgcl.memory_size": 40,
    "dgcl.memory_per_class": 40, "dgcl.num_anchors": 16, "dgcl.num_positives": 8,
    "dgcl.num_negatives": 32, "model.dropout_rate": 0.0, "semi.cutmix_prob": 0.0,
}


def _config(**overrides):
  return tiny_config(**{**SETTINGS, **overrides})


def _state_at(config, step, full_memory=False):
  state = create_train_state(config, jax.random.key(0))
  extra = state.extra
  if full_memory:
    memory = extra["memory"]
    rs = np.random.RandomState(1)
    memory = dict(memory, fts=jnp.asarray(rs.randn(*memory["fts"].shape), jnp.float32),
                  rep=jnp.asarray(rs.randn(*memory["rep"].shape), jnp.float32),
                  density=jnp.asarray(rs.rand(*memory["density"].shape), jnp.float32),
                  count=jnp.full_like(memory["count"], memory["density"].shape[1]))
    extra = {"memory": memory}
  return state.replace(step=jnp.asarray(step, jnp.int32), extra=extra)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _nearest(labels, size):
  """PyTorch's mode="nearest": source index floor(i * in / out)."""
  h, w = labels.shape[-2:]
  rows = (np.arange(size[0]) * h // size[0])
  cols = (np.arange(size[1]) * w // size[1])
  return labels[..., rows[:, None], cols[None, :]]


@functools.lru_cache(maxsize=None)
def _teacher_on_two_devices():
  """(config, tools, the pmapped teacher): compiled once for both epochs below."""
  config = _config(total_steps=20)    # 10 epochs of 2 steps, warm-up epoch 0
  tools = make_tools(config)
  teacher = dgcl.make_pseudo_labels(tools)
  run = jax.pmap(lambda s, b: teacher(s, b, dgcl.Phase(True), jax.random.key(0)),
                 axis_name=AXIS, in_axes=(None, 0))
  return config, tools, run


@pytest.mark.parametrize("epoch", [1, 7])
def test_teacher_labels_are_numpys_entropy_quantiles_over_the_global_batch(epoch):
  config, tools, run = _teacher_on_two_devices()
  state = _state_at(config, epoch * config.steps_per_epoch)
  batch = synthetic_batch(config, 2, seed=5)
  seen = run(replicate(state, jax.local_devices()[:2]), batch)
  # Reference: the teacher's logits in inference mode (the tiny config's teacher rule),
  # entropies and np.percentile over every device's valid pixels together.
  variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  x_u = batch["unlabeled_weak"].reshape(-1, *batch["unlabeled_weak"].shape[2:])
  logits = np.asarray(tools.model.apply(variables, x_u, False))      # (4, h, w, K)
  grid = logits.shape[1:3]
  p = (epoch - 1) / (10 - 1)
  r_u, a_t = 20 * (1 - p), max(80 * (1 - p), 10)

  def keep(probs, valid, drop):
    h = -np.sum(probs * np.log(probs + 1e-10), -1)
    return valid & (h < np.percentile(h[valid], 100 - drop))

  ignore = batch["unlabeled_ignore"].reshape(-1, *batch["unlabeled_ignore"].shape[2:])
  probs = _softmax(logits.astype(np.float64))
  valid = _nearest(ignore, grid) != 255
  want = np.where(keep(probs, valid, a_t), probs.argmax(-1), 255)
  got = np.asarray(seen.extra)                       # (2 devices, 2B, h, w)
  n_l = config.data.labeled_per_device
  got_unlabeled = got[:, n_l:].reshape(want.shape)
  assert np.mean(got_unlabeled == want) > 0.995      # ties at the quantile may flip
  assert abs(np.mean(got_unlabeled[valid] != 255) - (1 - a_t / 100)) < 0.02
  labeled = batch["labeled_label"]
  np.testing.assert_array_equal(got[:, :n_l], _nearest(labeled, grid))
  # Self-training labels: at the crop, r_u % of the valid pixels dropped.
  pseudo = np.asarray(seen.pseudo).reshape(ignore.shape)
  kept = np.mean(pseudo[ignore != 255] != 255)
  assert abs(kept - (1 - r_u / 100)) < 0.01
  assert np.all(pseudo[ignore == 255] == 255)


def test_memory_update_is_the_same_on_one_and_two_devices_and_counts_every_pixel():
  config = _config(**{"dgcl.memory_size": 64, "dgcl.memory_per_class": 30})
  tools = make_tools(config)
  update = dgcl.make_memory_update(tools)
  state = _state_at(config, 2)
  k, c_f, c_r = config.data.num_classes, 16, 8
  rs = np.random.RandomState(2)
  n_l, n_u, h = 2, 2, 4
  outputs = {"fts": rs.randn(2, n_l + n_u, h, h, c_f).astype(np.float32),
             "rep": rs.randn(2, n_l + n_u, h, h, c_r).astype(np.float32),
             "labels": rs.choice([0, 1, 2, 3, 4, 255], (2, n_l + n_u, h, h),
                                 p=[.05, .15, .2, .25, .3, .05]).astype(np.int32)}
  batch = {"labeled_image": np.zeros((2, n_l, 8, 8, 3), np.float32)}

  def run(devices, outs, b):
    fn = lambda e, o, bb, s: update(e, StepInputs(s, bb, dgcl.Phase(True), None, None, o),
                                    jax.random.key(0))
    return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0, 0, None), out_axes=None,
                    devices=devices)(state.extra, outs, b, state)

  extra2, metrics = run(jax.local_devices()[:2], outputs, batch)
  # One device holding both devices' labeled images first, then their unlabeled ones.
  one = {key: np.concatenate([v[:, :n_l].reshape(1, -1, *v.shape[2:]),
                              v[:, n_l:].reshape(1, -1, *v.shape[2:])], axis=1)
         for key, v in outputs.items()}
  extra1, _ = run(jax.local_devices()[:1], one, {"labeled_image": batch["labeled_image"]
                                                  .reshape(1, -1, 8, 8, 3)})
  for a, b in zip(leaves(extra1), leaves(extra2)):
    np.testing.assert_array_equal(a, b)
  labels = outputs["labels"]
  counts = [min(30, int(np.sum(labels == c))) for c in range(k)]
  np.testing.assert_array_equal(np.asarray(extra2["memory"]["count"]), counts)
  # Every stored row of class c is a pixel of class c.
  fts, flat = outputs["fts"].reshape(-1, c_f), labels.reshape(-1)
  for c in range(k):
    rows = np.asarray(extra2["memory"]["fts"][c, :counts[c]])
    match = np.all(np.isclose(rows[:, None], fts[None]), -1)       # (rows, pixels)
    assert np.all(match.any(1)) and np.all(flat[match.argmax(1)] == c)
  assert float(metrics["memory_fill"]) == pytest.approx(np.mean(counts) / 64)
  assert not bool(class_memory.is_full(extra2["memory"]))


def _loss_and_grads(config):
  """fn(state, batch) -> (loss, grads, metrics) of DGCL's semi-supervised loss on one
  device (compiled once per config)."""
  tools = make_tools(config)
  teacher, loss_fn = dgcl.make_pseudo_labels(tools), dgcl.make_loss(tools)
  ignore = config.data.ignore_label

  def f(s, b):
    key = jax.random.key(3)
    seen = teacher(s, b, dgcl.Phase(True), key)
    label = jnp.where(b["unlabeled_ignore"] == ignore, ignore, seen.pseudo)
    inputs = StepInputs(s, b, dgcl.Phase(True), seen, Targets(b["unlabeled_strong"], label))
    (loss, (_, metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        s.params, inputs, key)
    return loss, grads, metrics

  return jax.pmap(f, axis_name=AXIS, in_axes=(None, 0), devices=jax.local_devices()[:1])


def test_release_gradient_scale_changes_the_gradient_not_the_value():
  # lambda 0.5 with the release's 1/4 gradient scale and lambda 0.125 unscaled have the
  # same gradient; their values differ by (0.5 - 0.125) L_c.
  batch = synthetic_batch(_config(), 1, seed=7)
  released = _config(**{"dgcl.contrast_grad_scale": 0.25})
  state = _state_at(released, 2, full_memory=True)
  loss_a, grads_a, metrics_a = _loss_and_grads(released)(state, batch)
  light = _config(**{"dgcl.lambda_contrast": 0.125})
  loss_b, grads_b, metrics_b = _loss_and_grads(light)(state, batch)
  contrast = float(metrics_a["loss_contrast"][0])
  assert contrast > 0 and float(metrics_a["contrast_classes"][0]) == 5   # class 0 included
  assert float(metrics_b["loss_contrast"][0]) == pytest.approx(contrast, rel=1e-6)
  assert float(loss_a[0] - loss_b[0]) == pytest.approx(0.375 * contrast, rel=1e-4)
  for a, b in zip(leaves(grads_a), leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_contrastive_loss_waits_for_a_full_memory():
  config = _config(**{"dgcl.exclude_class_0": True})
  batch = synthetic_batch(config, 1, seed=7)
  run = _loss_and_grads(config)
  _, _, empty = run(_state_at(config, 2), batch)
  assert float(empty["loss_contrast"][0]) == 0.0
  assert float(empty["contrast_classes"][0]) == 0.0
  _, _, full = run(_state_at(config, 2, full_memory=True), batch)
  assert float(full["loss_contrast"][0]) > 0
  assert float(full["contrast_classes"][0]) == 4     # the release's rule: class 0 skipped
