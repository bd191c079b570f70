"""Segmentation metrics from an integer confusion matrix.

The confusion matrix is counted on the device with static shapes (so it can live inside a
jitted / pmapped evaluation step) and summed over the validation set on the host in int64.
mIoU and pixel accuracy are then derived from the summed counts in float64, never from
averages of per-batch scores: a batch score would weight images by batch, not by pixel.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int,
                     ignore_label: int = 255,
                     valid: Optional[jax.Array] = None,
                     num_predictions: Optional[int] = None) -> jax.Array:
  """Counts (ground truth, prediction) pairs; jit- and pmap-friendly.

  A pixel is left out when its label is `ignore_label` or outside [0, K), when its
  prediction is outside [0, P) (impossible for an argmax over P logits), or when its
  example is marked invalid (the padding that makes the last batch full).

  P = `num_predictions` (default K) may exceed K: a head with more outputs than classes,
  such as USSS's extra "None" channel, whose predictions then sit in columns K .. P - 1
  and count as false negatives of their true class only (`iou_from_confusion`).

  Counts are int32: one call may count at most 2**31 - 1 pixels per cell, i.e. about
  1000 Cityscapes images (1024 x 2048) per call, summed over devices if the result is
  psum-ed. Sum calls on the host in int64 (see `evaluate.evaluate`).

  Args:
    pred: (B, ...) integer predictions.
    label: (B, ...) integer ground truth, same shape as `pred`.
    num_classes: K (static).
    ignore_label: label value that is never counted.
    valid: Optional (B,) bool, which examples count.

  Returns:
    int32 (K, P) matrix, rows indexed by ground truth, columns by prediction.
  """
  pred = jnp.asarray(pred).astype(jnp.int32)
  label = jnp.asarray(label).astype(jnp.int32)
  if pred.shape != label.shape:
    raise ValueError(f"pred {pred.shape} and label {label.shape} differ in shape")
  k = num_classes
  p = k if num_predictions is None else num_predictions
  if p < k:
    raise ValueError(f"num_predictions {p} must be at least num_classes {k}")
  keep = ((label != ignore_label) & (label >= 0) & (label < k) & (pred >= 0) & (pred < p))
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    if valid.shape != label.shape[:1]:
      raise ValueError(f"valid {valid.shape} must have shape {label.shape[:1]}")
    keep = keep & valid.reshape(valid.shape + (1,) * (label.ndim - 1))
  # Dropped pixels still go to some bin (0) so that the index array keeps a static shape;
  # their zero weight keeps them out of the count.
  index = jnp.where(keep, label * p + pred, 0).reshape(-1)
  counts = jax.ops.segment_sum(keep.reshape(-1).astype(jnp.int32), index, num_segments=k * p)
  return counts.reshape(k, p)


def iou_from_confusion(conf) -> Tuple[float, np.ndarray]:
  """Mean and per-class intersection over union, in float64.

  IoU_k = TP_k / (TP_k + FP_k + FN_k). A class absent from both the ground truth and the
  predictions has an empty union and no defined IoU: it is NaN here and left out of the
  mean, so a validation subset that lacks a class is not penalised for it. (The release
  divides by union + 1e-10, which scores such a class 0 and averages it in; on the full
  VOC and Cityscapes validation sets every class occurs, and both agree.)

  Args:
    conf: (K, P) counts, rows = ground truth, columns = prediction, P >= K; columns
      beyond K (predictions of no class) count in their row's FN only.

  Returns:
    `(miou, per_class_iou)`: the mean over classes with a non-empty union (NaN if there
    is none) and the (K,) float64 IoUs.
  """
  conf = np.asarray(conf, np.float64)
  k = conf.shape[0]
  tp = np.diag(conf[:, :k])
  union = conf[:, :k].sum(axis=0) + conf.sum(axis=1) - tp
  present = union > 0
  iou = np.full(tp.shape, np.nan)
  iou[present] = tp[present] / union[present]
  miou = float(iou[present].mean()) if present.any() else float("nan")
  return miou, iou


def pixel_accuracy(conf) -> float:
  """Fraction of counted pixels whose prediction equals the label (NaN if none counted)."""
  conf = np.asarray(conf, np.float64)
  total = conf.sum()
  return float(np.trace(conf[:, :conf.shape[0]]) / total) if total > 0 else float("nan")
