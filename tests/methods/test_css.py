"""CSS wired into the step: the teacher's logit- and representation-space labels and the
mix / cross rules against NumPy, the strong view carrying every map, the schedules.

The building blocks (prototype labels, EMA over devices, draws, contrastive loss, the
weighted CE, the ramp-down) are tested in test_prototypes.py, the on-device strong view
in tests/training/test_strong_view.py, the method contract in test_method_contract.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.methods import css
from ddfp_jax.methods.interface import Phase, Teacher
from ddfp_jax.training.state import create_train_state
from ddfp_jax.training.step import AXIS, make_tools, replicate
from tiny import synthetic_batch, tiny_config

SETTINGS = {"method": "css", "model.projection_dim": 8,
            "model.projection_on": "decoder_input", "model.dropout_rate": 0.0}


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _upsample(x, size):
  """Bilinear, align_corners=True, in NumPy (N, h, w, C) -> (N, H, W, C)."""
  n, h, w, c = x.shape
  def taps(i, o):
    src = np.arange(o) * (i - 1) / max(o - 1, 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, i - 1)
    return lo, hi, src - lo
  (y0, y1, wy), (x0, x1, wx) = taps(h, size[0]), taps(w, size[1])
  rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
  return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


@functools.lru_cache(maxsize=None)
def _teacher(variant):
  config = tiny_config(**SETTINGS, **{"css.variant": variant})
  tools = make_tools(config)
  teacher = css.make_pseudo_labels(tools)
  run = jax.pmap(lambda s, b: teacher(s, b, Phase(True), jax.random.key(0)),
                 axis_name=AXIS, in_axes=(None, 0))
  return config, tools, run


@pytest.mark.parametrize("variant", ["mix", "cross"])
def test_teacher_labels_of_both_spaces_and_the_rules(variant):
  config, tools, run = _teacher(variant)
  state = create_train_state(config, jax.random.key(0))
  k = config.data.num_classes
  rs = np.random.RandomState(0)
  prototypes = rs.randn(k, 8).astype(np.float32)
  prototypes[1] = 0.0                                    # a class never seen: similarity 0
  state = state.replace(extra={"prototypes": jnp.asarray(prototypes)})
  batch = synthetic_batch(config, 2, seed=4)
  seen = run(replicate(state, jax.local_devices()[:2]), batch)

  # Reference: the teacher's logits and representations in inference mode (the tiny
  # config's teacher rule), the rest in NumPy from the spec.
  variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  flat = lambda x: np.asarray(x).reshape(-1, *np.asarray(x).shape[2:])
  x_u = flat(batch["unlabeled_weak"])
  u = tools.model.apply(variables, x_u, False, method="encode")
  logits = np.asarray(tools.model.apply(variables, x_u, False), np.float64)
  rep = np.asarray(tools.model.apply(variables, u, False, method="project"), np.float64)
  size = x_u.shape[1:3]
  probs = _softmax(_upsample(logits, size))
  r = rep / np.linalg.norm(rep, axis=-1, keepdims=True)
  p = prototypes / np.maximum(np.linalg.norm(prototypes, axis=-1, keepdims=True), 1e-12)
  probs_rep = _softmax(_upsample(r @ p.T, size) / 0.5)
  padded = flat(batch["unlabeled_ignore"]) == 255
  y_cls = np.where(padded, 255, probs.argmax(-1))
  y_rep = np.where(padded, 255, probs_rep.argmax(-1))
  got_cls, got_rep = flat(seen.extra["cls_label"]), flat(seen.extra["rep_label"])
  assert np.mean(got_cls == y_cls) > 0.999 and np.mean(got_rep == y_rep) > 0.999
  np.testing.assert_allclose(flat(seen.confidence), probs.max(-1), atol=1e-5)
  np.testing.assert_allclose(flat(seen.extra["rep_confidence"]), probs_rep.max(-1), atol=1e-5)
  if variant == "mix":
    want = np.where(got_cls == got_rep, got_cls, 255)
    assert 0 < np.mean(want != 255) < 1
  else:
    want = got_cls
  np.testing.assert_array_equal(flat(seen.pseudo), want)


def test_strong_view_targets_carry_labels_confidences_and_padding():
  config = tiny_config(**SETTINGS, **{"css.strong.color_prob": 0.0,
                                      "css.strong.blur_prob": 0.0})
  tools = make_tools(config)
  targets = jax.jit(css.make_targets(tools))
  batch = synthetic_batch(config, 1, seed=1)
  batch = {k: v[0] for k, v in batch.items()}
  n, h, w = batch["unlabeled_ignore"].shape
  rs = np.random.RandomState(3)
  cls_label = rs.randint(0, 3, (n, h, w)).astype(np.int32)
  teacher = Teacher(jnp.asarray(cls_label), jnp.asarray(cls_label / 4.0, jnp.float32), None,
                    None, extra={"cls_label": jnp.asarray(cls_label),
                                 "rep_label": jnp.asarray(cls_label),
                                 "rep_confidence": jnp.asarray(cls_label / 4.0, jnp.float32),
                                 "rep": None})
  out = targets(batch, teacher, jax.random.key(2))
  maps = out.extra
  label = np.asarray(out.label)
  real = label != 255
  assert 0 < real.mean() < 1 or real.all()
  # Labels and both confidences travel together (confidence = label / 4 everywhere).
  np.testing.assert_allclose(np.asarray(maps["confidence"])[real], label[real] / 4.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(maps["rep_confidence"])[real], label[real] / 4.0,
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(maps["rep_label"]), label)
  assert out.image.shape == batch["unlabeled_weak"].shape


def test_rampdown_and_the_cross_warm_up_count_the_css_epoch():
  config = tiny_config(**SETTINGS, **{"css.rampdown_steps_per_epoch": 3,
                                      "css.rampdown_epochs": 10, "css.lambda_contrast": 2.0})
  for step, epoch in ((0, 0), (8, 2), (29, 9), (30, 10)):
    want = 2.0 * np.exp(-5.0 * (epoch / 10) ** 2) if epoch < 10 else 0.0
    assert float(css.rampdown_weight(config, jnp.asarray(step))) == pytest.approx(want)
    assert int(css.css_epoch(config, jnp.asarray(step))) == epoch
