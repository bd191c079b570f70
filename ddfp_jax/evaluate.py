"""Validation: per-device confusion matrices, summed over devices and over batches.

The per-device step is written once with a named axis and run under `jax.pmap`:

    step = make_eval_step(model, num_classes=21, density=density)
    p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0))
    results = evaluate(p_step, variables, batches, density_params=flow_params)

Variables are passed unreplicated (`in_axes=None`), batches carry a leading local-device
axis. Every validation image counts exactly once: the last batch is filled up with
examples marked `valid=False`, which the confusion matrix skips (no `drop_remainder`).

Under multi-process pmap the named axis spans every device of every process, so the
psum-ed confusion matrix is already global, and every process must run the same number of
steps (pad with all-invalid batches where a process has fewer images).
"""
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax import metrics
from ddfp_jax.resize import resize_bilinear

Batch = Mapping[str, jax.Array]
# Key prefix of the FlowGMM classification results.
FLOW_PREFIX = "flow_"


def predict(logits: jax.Array, size) -> jax.Array:
  """Stride-4 logits (B, h, w, K) -> int32 class map (B, H, W) at the label size.

  Logits are upsampled bilinearly (align_corners=True, as the release) before the argmax,
  so the prediction is made at full resolution rather than a nearest copy of the
  stride-4 one.
  """
  logits = resize_bilinear(logits.astype(jnp.float32), size)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_eval_step(model: nn.Module, num_classes: int,
                   density: Optional[nn.Module] = None, axis_name: Optional[str] = "batch",
                   ignore_label: int = 255
                   ) -> Callable[[Any, Any, Batch], Dict[str, jax.Array]]:
  """Builds the per-device evaluation step.

  Args:
    model: a `DeepLabV3Plus`; run in inference mode (running BN statistics, no dropout).
    num_classes: K.
    density: optional `FeatureDensity` for FlowGMM classification of the clean features
      v (main BatchNorm). Used only when the step also receives its params.
    axis_name: the pmap axis to psum over; None for a plain single-device call.
    ignore_label: label value that is never counted.

  Returns:
    `eval_step(variables, density_params, batch) -> {"confusion": (K, K) int32[,
    "flow_confusion": (K, K) int32]}` where `variables` are the model's variables
    ({"params", "batch_stats"}), `density_params` the density's variables as
    `density.init` returns them ({"params": ...}; the bare params tree is accepted too)
    or None, and `batch` holds "image" (B, H, W, 3) float32, "label" (B, H, W) int and
    optionally "valid" (B,) bool. Whether the FlowGMM path runs is decided at trace time
    from `density` and `density_params is None`.
  """

  def eval_step(variables, density_params, batch: Batch) -> Dict[str, jax.Array]:
    image, label = batch["image"], batch["label"]
    valid = batch.get("valid")
    size = label.shape[1:3]
    u = model.apply(variables, image, False, method="encode")
    v = model.apply(variables, u, False, method="features")
    logits = model.apply(variables, v, method="classify")
    confusion = lambda logits: metrics.confusion_matrix(
        predict(logits, size), label, num_classes, ignore_label, valid)
    out = {"confusion": confusion(logits)}
    if density is not None and density_params is not None:
      flow_logits = density.apply(_as_variables(density_params), v.astype(jnp.float32),
                                  method="class_logits")
      out[FLOW_PREFIX + "confusion"] = confusion(flow_logits)
    if axis_name is not None:
      out = jax.lax.psum(out, axis_name)
    return out

  return eval_step


def _as_variables(density_params):
  # A FeatureDensity's params tree has the keys "flow" and "means", never "params", so
  # the bare tree and the full variables dict cannot be confused.
  if "params" in density_params:
    return density_params
  return {"params": density_params}


def summarize(confusion, prefix: str = "") -> Dict[str, Any]:
  """mIoU, per-class IoU, pixel accuracy and the int64 confusion matrix, keys prefixed."""
  confusion = np.asarray(confusion, np.int64)
  miou, per_class = metrics.iou_from_confusion(confusion)
  return {prefix + "miou": miou, prefix + "per_class_iou": per_class,
          prefix + "pixel_accuracy": metrics.pixel_accuracy(confusion),
          prefix + "confusion": confusion}


def evaluate(p_eval_step: Callable, variables, batches: Iterable[Batch],
             density_params=None) -> Dict[str, Any]:
  """Runs the pmapped step over every batch and sums the confusion matrices on the host.

  Args:
    p_eval_step: `jax.pmap(make_eval_step(...), axis_name=..., in_axes=(None, None, 0))`
      or any callable with that signature whose outputs carry a leading device axis.
    variables: model variables, in the layout `p_eval_step` expects (unreplicated with
      `in_axes=None`).
    batches: iterable of dicts of arrays shaped (D, B, ...), D the local device count.
    density_params: the density's variables (or params) for the FlowGMM results, or
      None.

  Returns:
    {"miou", "per_class_iou", "pixel_accuracy", "confusion"} (confusion as int64), and
    the same keys with a "flow_" prefix when the FlowGMM path ran. Raises if `batches`
    is empty.
  """
  totals: Dict[str, np.ndarray] = {}
  for batch in batches:
    out = p_eval_step(variables, density_params, batch)
    for key, value in out.items():
      # The psum left every device the same global counts: device 0's copy is the total.
      value = np.asarray(jax.device_get(value))
      if value.ndim == 3:
        value = value[0]
      totals[key] = totals.get(key, 0) + value.astype(np.int64)
  if not totals:
    raise ValueError("no validation batches")
  results = summarize(totals["confusion"])
  if FLOW_PREFIX + "confusion" in totals:
    results.update(summarize(totals[FLOW_PREFIX + "confusion"], FLOW_PREFIX))
  return results


def padded_batches(images: np.ndarray, labels: np.ndarray, num_devices: int,
                   per_device_batch: int, ignore_label: int = 255) -> Iterator[Dict[str, np.ndarray]]:
  """Splits in-memory arrays into (D, B, ...) batches, padding the last one.

  Padding examples are zeros with `ignore_label` labels and `valid=False`, so that every
  image is counted once whatever the set size.

  Args:
    images: (N, H, W, 3) float images.
    labels: (N, H, W) int labels.
    num_devices: D, local devices.
    per_device_batch: B.
    ignore_label: label given to padding pixels.

  Yields:
    dicts with "image" (D, B, H, W, 3), "label" (D, B, H, W) and "valid" (D, B).
  """
  n = len(images)
  step = num_devices * per_device_batch
  for start in range(0, n, step):
    image, label = images[start:start + step], labels[start:start + step]
    pad = step - len(image)
    valid = np.arange(step) < len(image)
    image = np.concatenate([image, np.zeros((pad,) + image.shape[1:], image.dtype)])
    label = np.concatenate([label, np.full((pad,) + label.shape[1:], ignore_label,
                                           label.dtype)])
    shape = lambda x: x.reshape((num_devices, per_device_batch) + x.shape[1:])
    yield {"image": shape(image), "label": shape(label), "valid": shape(valid)}
