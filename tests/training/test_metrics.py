"""Confusion matrix, mIoU and pixel accuracy against hand counts."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.training import metrics


def _loop_confusion(pred, label, num_classes, ignore_label, valid):
  conf = np.zeros((num_classes, num_classes), np.int64)
  for b in range(label.shape[0]):
    if not valid[b]:
      continue
    for p, t in zip(pred[b].ravel(), label[b].ravel()):
      if t != ignore_label and 0 <= t < num_classes:
        conf[t, p] += 1
  return conf


def test_confusion_matches_double_loop():
  rng = np.random.RandomState(0)
  k = 6
  pred = rng.randint(0, k, size=(5, 7, 9))
  # Labels include ignored pixels (255) and out-of-range classes (6, 7), both skipped.
  label = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 7, 255]), size=(5, 7, 9))
  valid = np.array([True, False, True, True, False])
  expected = _loop_confusion(pred, label, k, 255, valid)
  conf = metrics.confusion_matrix(pred, label, k, ignore_label=255, valid=valid)
  assert conf.dtype == jnp.int32 and conf.shape == (k, k)
  np.testing.assert_array_equal(np.asarray(conf), expected)
  # Invalid examples really are dropped: counting them too gives a different matrix.
  all_valid = metrics.confusion_matrix(pred, label, k)
  np.testing.assert_array_equal(np.asarray(all_valid),
                                _loop_confusion(pred, label, k, 255, np.ones(5, bool)))
  assert np.asarray(all_valid).sum() > expected.sum()


def test_confusion_under_jit_compiles_once():
  k = 4
  rng = np.random.RandomState(1)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def count(pred, label, valid):
    return metrics.confusion_matrix(pred, label, k, valid=valid)

  for _ in range(3):
    pred = rng.randint(0, k, size=(3, 5, 5)).astype(np.int32)
    label = rng.choice(np.array([0, 1, 2, 3, 255]), size=(3, 5, 5)).astype(np.int32)
    valid = rng.rand(3) > 0.3
    np.testing.assert_array_equal(np.asarray(count(pred, label, valid)),
                                  _loop_confusion(pred, label, k, 255, valid))


def test_miou_of_a_known_matrix():
  # Rows: ground truth, columns: prediction.
  conf = np.array([[50, 2, 3],
                   [4, 30, 6],
                   [1, 5, 20]])
  # Class 0: TP 50, FN 2 + 3 = 5, FP 4 + 1 = 5 -> 50 / 60.
  # Class 1: TP 30, FN 4 + 6 = 10, FP 2 + 5 = 7 -> 30 / 47.
  # Class 2: TP 20, FN 1 + 5 = 6, FP 3 + 6 = 9 -> 20 / 35.
  expected = np.array([50 / 60, 30 / 47, 20 / 35])
  miou, per_class = metrics.iou_from_confusion(conf)
  assert per_class.dtype == np.float64
  np.testing.assert_allclose(per_class, expected, rtol=1e-15)
  np.testing.assert_allclose(miou, (50 / 60 + 30 / 47 + 20 / 35) / 3, rtol=1e-15)
  # Pixel accuracy: (50 + 30 + 20) / 121.
  np.testing.assert_allclose(metrics.pixel_accuracy(conf), 100 / 121, rtol=1e-15)


def test_absent_class_is_nan_and_left_out_of_the_mean():
  # Class 2 is neither in the ground truth nor predicted; class 3 is predicted but never
  # true, so its IoU is 0 and it does count.
  conf = np.array([[8, 2, 0, 0],
                   [1, 9, 0, 2],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]])
  miou, per_class = metrics.iou_from_confusion(conf)
  assert np.isnan(per_class[2])
  np.testing.assert_allclose(per_class[[0, 1, 3]], [8 / 11, 9 / 14, 0.0], rtol=1e-15)
  np.testing.assert_allclose(miou, (8 / 11 + 9 / 14 + 0.0) / 3, rtol=1e-15)


def test_empty_matrix_gives_nan():
  miou, per_class = metrics.iou_from_confusion(np.zeros((3, 3), np.int64))
  assert np.isnan(miou) and np.isnan(per_class).all()
  assert np.isnan(metrics.pixel_accuracy(np.zeros((3, 3), np.int64)))


def test_pmap_psum_of_confusion_is_the_global_count():
  n = jax.local_device_count()
  k = 3
  rng = np.random.RandomState(2)
  pred = rng.randint(0, k, size=(n, 2, 4, 4))
  label = rng.choice(np.array([0, 1, 2, 255]), size=(n, 2, 4, 4))
  valid = rng.rand(n, 2) > 0.25

  @functools.partial(jax.pmap, axis_name="d")
  def count(pred, label, valid):
    return jax.lax.psum(metrics.confusion_matrix(pred, label, k, valid=valid), "d")

  out = np.asarray(count(pred, label, valid))
  expected = _loop_confusion(pred.reshape(-1, 4, 4), label.reshape(-1, 4, 4), k, 255,
                             valid.reshape(-1))
  for d in range(n):
    np.testing.assert_array_equal(out[d], expected)


def test_an_extra_prediction_column_counts_as_a_false_negative_only():
  """USSS's "None" output (index K of K + 1): a pixel predicted None lowers its true
  class's IoU (its union grows by one) and no other class's."""
  label = np.array([[0, 0, 1, 1, 2, 2]])
  pred = np.array([[0, 3, 1, 1, 2, 0]])          # one "None" (3) on a class-0 pixel
  conf = np.asarray(metrics.confusion_matrix(pred, label, 3, num_predictions=4))
  assert conf.shape == (3, 4) and conf[0, 3] == 1 and conf.sum() == 6
  _, iou = metrics.iou_from_confusion(conf)
  # class 0: TP 1, FN 1 (None) + FP 1 (a class-2 pixel predicted 0): 1/3; class 1: 1;
  # class 2: TP 1, FN 1: 1/2. Without the None pixel class 0 would be 1/2.
  np.testing.assert_allclose(iou, [1 / 3, 1.0, 1 / 2])
  assert metrics.pixel_accuracy(conf) == 4 / 6
  square = np.asarray(metrics.confusion_matrix(pred, label, 3))   # None dropped
  assert square.sum() == 5
