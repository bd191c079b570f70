"""The two validation protocols: sliding windows (Cityscapes) and the centre crop (VOC).

The sliding-window results are checked against a window-by-window loop whose grid is
written here again from the rules, not taken from `evaluate`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from ddfp_jax.models import builders
from ddfp_jax.training import evaluate as evaluation
from ddfp_jax.data import augment
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.methods.ddfp import flowgmm_head
from tiny import tiny_config

K = 5


@pytest.fixture(scope="module")
def setup():
  """Tiny model and density from the tiny config, their variables, and a jitted head."""
  config = tiny_config(**{"model.deep_stem": False})  # a third less to compile
  model = builders.build_model(config)
  density = builders.build_density(config)
  x = np.zeros((1, 32, 32, 3), np.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  v = jax.eval_shape(lambda x: model.apply(
      variables, model.apply(variables, x, False, method="encode"), False,
      method="features"), x)
  density_params = jax.jit(density.init)(jax.random.key(1), jnp.zeros(v.shape))

  @jax.jit
  def logits(x):
    u = model.apply(variables, x, False, method="encode")
    v = model.apply(variables, u, False, method="features")
    return model.apply(variables, v, method="classify")

  return model, variables, density, density_params, logits


def _spans(size, window, stride, rule):
  """The grid rules, written as loops: the release's, and mmseg's / U2PL's."""
  spans = []
  if rule == "release":
    start = 0
    while start < size:
      spans.append((start, min(size, start + window)))
      start += stride
  else:
    for i in range(max(size - window + stride - 1, 0) // stride + 1):
      y1 = i * stride
      y2 = min(y1 + window, size)
      spans.append((max(y2 - window, 0), y2))
  return spans


def _reference_scores(logits_fn, images, window, stride, rule):
  """Summed softmax probabilities, one window at a time, accumulated in NumPy."""
  b, h, w, _ = images.shape
  total = np.zeros((b, h, w, K), np.float64)
  for y1, y2 in _spans(h, window, stride, rule):
    for x1, x2 in _spans(w, window, stride, rule):
      logits = resize_bilinear(logits_fn(images[:, y1:y2, x1:x2]), (y2 - y1, x2 - x1))
      logits = np.asarray(logits, np.float64)
      e = np.exp(logits - logits.max(-1, keepdims=True))
      total[:, y1:y2, x1:x2] += e / e.sum(-1, keepdims=True)
  return total


def _confusion(pred, labels):
  conf = np.zeros((K, K), np.int64)
  keep = labels < K
  np.add.at(conf, (labels[keep], pred[keep]), 1)
  return conf


# ----------------------------------------------------------------------------- the grid


def test_release_grid_on_cityscapes_images():
  assert evaluation.window_stride(801, 2 / 3) == 534
  assert evaluation.window_stride(769, 2 / 3) == 512
  spans = functools.partial(evaluation.window_spans, rule="release")
  # 801 / 534: the windows are cut at the border, not moved back into the image.
  assert spans(1024, 801, 534) == [(0, 801), (534, 1024)]
  assert spans(2048, 801, 534) == [(0, 801), (534, 1335), (1068, 1869), (1602, 2048)]
  assert spans(1024, 769, 512) == [(0, 769), (512, 1024)]
  assert spans(2048, 769, 512) == [(0, 769), (512, 1281), (1024, 1793), (1536, 2048)]
  grid = evaluation.window_grid(1024, 2048, 801, 534)
  assert len(grid) == 8 and grid[0] == (0, 801, 0, 801) and grid[-1] == (534, 1024, 1602, 2048)


def test_shifted_grid_on_cityscapes_images():
  spans = functools.partial(evaluation.window_spans, rule="shifted")
  assert spans(1024, 801, 534) == [(0, 801), (223, 1024)]
  assert spans(2048, 801, 534) == [(0, 801), (534, 1335), (1068, 1869), (1247, 2048)]
  assert spans(1024, 769, 512) == [(0, 769), (255, 1024)]
  assert spans(2048, 769, 512) == [(0, 769), (512, 1281), (1024, 1793), (1279, 2048)]
  grid = evaluation.window_grid(1024, 2048, 769, 512, rule="shifted")
  assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in grid} == {(769, 769)}


def test_grid_on_images_smaller_than_the_window():
  for rule in evaluation.GRID_RULES:
    assert evaluation.window_grid(300, 400, 769, 512, rule) == [(0, 300, 0, 400)]
  # Between the stride and the window the release loop still starts a second window.
  assert evaluation.window_spans(600, 769, 512, "release") == [(0, 600), (512, 600)]
  assert evaluation.window_spans(600, 769, 512, "shifted") == [(0, 600)]


@pytest.mark.parametrize("rule", evaluation.GRID_RULES)
def test_grid_matches_the_loops_and_covers_every_pixel(rule):
  for size in (1, 20, 32, 40, 53, 64, 72, 100):
    for window, stride in ((32, 21), (32, 32), (7, 1), (801, 534)):
      spans = evaluation.window_spans(size, window, stride, rule)
      assert spans == _spans(size, window, stride, rule)
      covered = np.zeros(size, bool)
      for start, end in spans:
        assert 0 <= start < end <= size and end - start <= window
        covered[start:end] = True
      assert covered.all()


def test_bad_grid_arguments_raise():
  with pytest.raises(ValueError, match="stride"):
    evaluation.window_spans(100, 32, 33)
  with pytest.raises(ValueError, match="stride"):
    evaluation.window_spans(100, 32, 0)
  with pytest.raises(ValueError, match="rule"):
    evaluation.window_spans(100, 32, 21, "u2pl")
  with pytest.raises(ValueError, match="stride"):
    evaluation.make_eval_step(None, K, window=32, stride=40)


# ---------------------------------------------------------------------- sliding windows


def test_one_window_over_the_image_equals_whole_image_evaluation_under_pmap(setup):
  model, variables, density, density_params, _ = setup
  devices = jax.local_device_count()
  assert devices == 4
  rs = np.random.RandomState(0)
  images = rs.randn(7, 24, 40, 3).astype(np.float32)
  labels = rs.choice(np.array([0, 1, 2, 3, 4, 255]), size=(7, 24, 40)).astype(np.int32)
  # Window 64, stride 42: one window, the whole image, under both rules.
  for rule in evaluation.GRID_RULES:
    assert evaluation.window_grid(24, 40, 64, 42, rule) == [(0, 24, 0, 40)]

  def run(**kwargs):
    step = evaluation.make_eval_step(model, K, heads={"flow": flowgmm_head(density)},
                                     axis_name="batch", **kwargs)
    p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0))
    batches = evaluation.padded_batches(images, labels, devices, 2)
    return evaluation.evaluate(p_step, variables, batches,
                               head_state={"flow_params": density_params})

  whole = run()
  sliding = run(window=64, stride=42)
  counted = int((labels < K).sum())
  assert whole["confusion"].sum() == counted
  for key in ("confusion", "flow_confusion"):
    np.testing.assert_array_equal(sliding[key], whole[key])


# 40 x 56 with window 32 and stride 21: windows overlap on both axes; the release rule
# cuts them into four shapes, the shifted one has six 32 x 32 windows. window_batch 1 runs
# the release grid's two-window shapes in two passes; 4 runs the six shifted windows in
# two passes, the second filled up with two zero-weight windows.
IMAGE = (40, 56)


@pytest.mark.parametrize("rule,window_batch", [("release", 0), ("release", 1),
                                               ("shifted", 0), ("shifted", 4)])
def test_sliding_window_scores_match_a_window_by_window_loop(setup, rule, window_batch):
  logits_fn = setup[-1]
  images = np.random.RandomState(1).randn(2, *IMAGE, 3).astype(np.float32)
  expected = _reference_scores(logits_fn, images, 32, 21, rule)
  windows = evaluation.window_grid(*IMAGE, 32, 21, rule)
  scores = jax.jit(lambda x: evaluation.sliding_window_scores(
      lambda w: {"scores": logits_fn(w)}, x, windows, window_batch))(images)["scores"]
  np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-5, atol=1e-5)


def test_sliding_window_needs_labels_of_the_image_size(setup):
  model, variables, _, _, _ = setup
  step = evaluation.make_eval_step(model, K, axis_name=None, window=16)
  batch = {"image": np.zeros((1, 16, 16, 3), np.float32),
           "label": np.zeros((1, 8, 8), np.int32)}
  with pytest.raises(ValueError, match="size"):
    jax.eval_shape(step, variables, None, batch)


# --------------------------------------------------------------- protocol from the config


@pytest.mark.parametrize("protocol", ["whole", "center_crop", "sliding_window"])
def test_eval_step_from_config(monkeypatch, setup, protocol):
  model = setup[0]
  calls = []
  make = evaluation.make_eval_step

  def recording(*args, **kwargs):
    calls.append((args, kwargs))
    return make(*args, **kwargs)

  monkeypatch.setattr(evaluation, "make_eval_step", recording)
  config = tiny_config(**{"data.eval_protocol": protocol, "data.eval_window": 801,
                          "data.eval_window_batch": 3, "data.ignore_label": 254})
  step = evaluation.eval_step_from_config(config, model, axis_name=None)
  assert callable(step)
  (args, kwargs), = calls
  assert args == (model, K)
  assert kwargs["ignore_label"] == 254 and kwargs["axis_name"] is None
  if protocol == "sliding_window":
    assert (kwargs["window"], kwargs["stride"]) == (801, 534)
    assert kwargs["window_batch"] == 3 and kwargs["grid"] == "release"
  else:
    assert "window" not in kwargs


def test_sliding_window_protocol_from_config_runs(setup):
  model, variables, _, _, logits_fn = setup
  config = tiny_config(**{"data.eval_protocol": "sliding_window", "data.eval_window": 32})
  step = jax.jit(evaluation.eval_step_from_config(config, model, axis_name=None))
  rs = np.random.RandomState(2)
  # 21 x 40: one row of windows, (0, 32) and (21, 40) on the columns; two shapes.
  images = rs.randn(2, 21, 40, 3).astype(np.float32)
  labels = rs.choice(np.array([0, 1, 2, 3, 4, 255]), size=(2, 21, 40)).astype(np.int32)
  out = step(variables, None, {"image": images, "label": labels})
  expected = _reference_scores(logits_fn, images, 32, 21, "release")
  np.testing.assert_array_equal(np.asarray(out["confusion"]),
                                _confusion(expected.argmax(-1), labels))


def test_unknown_protocol_raises(setup):
  config = tiny_config(**{"data.eval_protocol": "multi_scale"})
  with pytest.raises(ValueError, match="eval_protocol"):
    evaluation.eval_step_from_config(config, setup[0])


# ------------------------------------------------------------------------- centre crop


def _release_center_crop(image, label, crop):
  """The release's centred padding (image 0, label 255) and centre crop, in NumPy."""
  h, w = label.shape
  pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
  top, left = int(pad_h / 2), int(pad_w / 2)
  pads = ((top, pad_h - top), (left, pad_w - left))
  image = np.pad(image.astype(np.float32), pads + ((0, 0),))
  label = np.pad(label, pads, constant_values=255)
  y, x = (label.shape[0] - crop) // 2, (label.shape[1] - crop) // 2
  return image[y:y + crop, x:x + crop], label[y:y + crop, x:x + crop]


def _example(h, w, seed=0):
  rs = np.random.RandomState(seed)
  image = rs.randint(1, 256, size=(h, w, 3)).astype(np.uint8)  # no 0: padding shows
  label = rs.randint(0, 21, size=(h, w)).astype(np.uint8)
  return image, label


def test_center_crop_pads_a_small_image_on_all_sides():
  image, label = _example(5, 7)
  out_image, out_label = augment.center_crop_and_pad(image, label, 10)
  out_image, out_label = out_image.numpy(), out_label.numpy()
  assert out_image.dtype == np.float32 and out_image.shape == (10, 10, 3)
  # Rows: 5 of padding, 2 on top and 3 below; columns: 3, 1 left and 2 right.
  np.testing.assert_array_equal(out_image[2:7, 1:8], image)
  np.testing.assert_array_equal(out_label[2:7, 1:8], label)
  inside = np.zeros((10, 10), bool)
  inside[2:7, 1:8] = True
  assert (out_image[~inside] == 0).all() and (out_label[~inside] == 255).all()


def test_center_crop_offsets_of_a_large_image():
  image, label = _example(15, 20)
  out_image, out_label = augment.center_crop_and_pad(image, label, 10)
  np.testing.assert_array_equal(out_image.numpy(), image[2:12, 5:15])
  np.testing.assert_array_equal(out_label.numpy(), label[2:12, 5:15])
  # Padded on one axis, cropped on the other.
  image, label = _example(6, 21)
  out_image, out_label = augment.center_crop_and_pad(image, label, 10, label_pad=254)
  np.testing.assert_array_equal(out_image.numpy()[2:8], image[:, 5:15])
  np.testing.assert_array_equal(out_label.numpy()[:2], 254)
  np.testing.assert_array_equal(out_label.numpy()[8:], 254)


def test_center_crop_matches_the_release_and_is_the_same_inside_tf_data():
  shapes = [(5, 7), (10, 10), (15, 20), (6, 21), (13, 4), (9, 11), (11, 9)]
  examples = [_example(h, w, seed) for seed, (h, w) in enumerate(shapes)]
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                        tf.TensorSpec([None, None], tf.uint8)))
  ds = ds.map(lambda image, label: augment.center_crop_and_pad(image, label, 10),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  assert [s.shape.as_list() for s in ds.element_spec] == [[10, 10, 3], [10, 10]]
  for (image, label), in_data in zip(examples, ds.as_numpy_iterator()):
    eager = augment.center_crop_and_pad(tf.constant(image), tf.constant(label), 10)
    expected = _release_center_crop(image, label, 10)
    for e, d, r in zip(eager, in_data, expected):
      np.testing.assert_array_equal(e.numpy(), d)
      np.testing.assert_array_equal(d, r)
