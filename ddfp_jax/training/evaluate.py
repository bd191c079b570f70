"""Validation: per-device confusion matrices, summed over devices and over batches.

The per-device step is written once with a named axis and run under `jax.pmap`:

    step = make_eval_step(model, num_classes=21, heads=method_heads)
    p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0))
    results = evaluate(p_step, variables, batches, head_state=state.extra)

Variables are passed unreplicated (`in_axes=None`), batches carry a leading local-device
axis. Every validation image counts exactly once: the last batch is filled up with
examples marked `valid=False`, which the confusion matrix skips (no `drop_remainder`).

Under multi-process pmap the named axis spans every device of every process, so the
psum-ed confusion matrix is already global, and every process must run the same number of
steps (pad with all-invalid batches where a process has fewer images).

Protocols (`eval_step_from_config`): "whole" and "center_crop" (VOC; the crop is made by
the input pipeline, `data.augment.center_crop_and_pad`) predict the image as it comes;
"sliding_window" (Cityscapes) sums the softmax probabilities of square windows over the
full image and takes the argmax (`sliding_window_scores`).
"""
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.data.protocols import GRID_RULES, PROTOCOLS
from ddfp_jax.training import metrics
from ddfp_jax.models.resize import resize_bilinear

Batch = Mapping[str, jax.Array]


def predict(logits: jax.Array, size) -> jax.Array:
  """Stride-4 logits (B, h, w, K) -> int32 class map (B, H, W) at the label size.

  Logits are upsampled bilinearly (align_corners=True, as the release) before the argmax,
  so the prediction is made at full resolution rather than a nearest copy of the
  stride-4 one.
  """
  logits = resize_bilinear(logits.astype(jnp.float32), size)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# (y1, y2, x1, x2): rows [y1, y2) and columns [x1, x2) of the image.
Window = Tuple[int, int, int, int]


def window_stride(window: int, ratio: float) -> int:
  """int(ratio * window), the release's `int(grid * 2 / 3)`.

  The small tolerance keeps a product that is an integer in exact arithmetic from being
  truncated one too low by float rounding (2/3 * 801 must give 534).
  """
  return int(math.floor(ratio * window + 1e-6))


def window_spans(size: int, window: int, stride: int,
                 rule: str = "release") -> List[Tuple[int, int]]:
  """[start, end) of the windows along one image axis of length `size`.

  Rules:
    "release": the DDFP release's Cityscapes validation loop. Windows start at 0,
      stride, 2 * stride, ... while the start is inside the image, and are cut at the
      border, so the last one or two are shorter than `window` (801 on 1024 rows:
      [0, 801), [534, 1024)). On an axis shorter than the window the first window is
      the whole axis and the later ones are tails of it.
    "shifted": the slide inference of mmsegmentation / U2PL. There are
      max(size - window + stride - 1, 0) // stride + 1 windows; window i ends at
      min(i * stride + window, size) and starts `window` before that (at 0 at most),
      so every window has side min(window, size) and all windows of an image can be
      stacked into one batch.

  Raises:
    ValueError: for an unknown rule, a non-positive window, or a stride outside
      [1, window] (a larger stride would leave pixels that no window sees).
  """
  if rule not in GRID_RULES:
    raise ValueError(f"window grid rule must be one of {GRID_RULES}, got {rule!r}.")
  if window < 1 or not 1 <= stride <= window:
    raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, "
                     f"stride={stride}.")
  if rule == "release":
    return [(start, min(start + window, size)) for start in range(0, size, stride)]
  spans = []
  for i in range(max(size - window + stride - 1, 0) // stride + 1):
    end = min(i * stride + window, size)
    spans.append((max(end - window, 0), end))
  return spans


def window_grid(height: int, width: int, window: int, stride: int,
                rule: str = "release") -> List[Window]:
  """Every (y1, y2, x1, x2) window, row by row, from the per-axis `window_spans`."""
  rows = window_spans(height, window, stride, rule)
  cols = window_spans(width, window, stride, rule)
  return [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]


def _group_by_shape(windows: Iterable[Window]) -> Dict[Tuple[int, int], List[Window]]:
  """Windows keyed by (height, width), first-seen order: one model batch per shape."""
  groups: Dict[Tuple[int, int], List[Window]] = {}
  for y1, y2, x1, x2 in windows:
    groups.setdefault((y2 - y1, x2 - x1), []).append((y1, y2, x1, x2))
  return groups


def sliding_window_scores(logits_fn: Callable[[jax.Array], Any], image: jax.Array,
                          windows: Iterable[Window], window_batch: int = 0) -> Any:
  """Softmax probabilities of every window, summed on a canvas of the image's size.

  Each window's logits are upsampled bilinearly (align_corners=True) to the window's
  size before the softmax, as the release does. Windows of the same shape share forward
  passes: all of them at once (`window_batch` <= 0), or `window_batch` at a time in a
  `lax.scan` that carries the canvas, which bounds the activation memory by
  `window_batch` x B windows whatever the image size. The grid is static, so the step
  compiles once per image size.

  Args:
    logits_fn: maps a batch of windows (N, h, w, C) to a pytree of logits
      (N, h', w', K_i) at any resolution (the model's stride-4 output).
    image: (B, H, W, C).
    windows: static (y1, y2, x1, x2) windows inside the image (`window_grid`).
    window_batch: windows per forward pass (each of the B images).

  Returns:
    a pytree like `logits_fn`'s output of float32 (B, H, W, K_i) summed probabilities;
    pixels no window covers stay 0.
  """
  b, h_img, w_img, channels = image.shape
  groups = _group_by_shape(windows)
  if not groups:
    raise ValueError("no windows")
  h0, w0 = next(iter(groups))
  shapes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((b, h0, w0, channels), image.dtype))
  canvas = jax.tree.map(lambda s: jnp.zeros((b, h_img, w_img, s.shape[-1]), jnp.float32),
                        shapes)
  for (h, w), group in groups.items():
    canvas = _add_windows(logits_fn, image, canvas, h, w, group, window_batch)
  return canvas


def _add_windows(logits_fn, image, canvas, h: int, w: int, group: List[Window],
                 window_batch: int):
  """Adds the probabilities of same-shape windows to `canvas`, `window_batch` per pass."""
  b, channels = image.shape[0], image.shape[-1]
  n = len(group)
  per_pass = n if window_batch <= 0 else min(window_batch, n)
  passes = -(-n // per_pass)
  # The last pass is filled up with copies of the first window at weight 0.
  pad = passes * per_pass - n
  ys = np.array([g[0] for g in group] + [group[0][0]] * pad, np.int32)
  xs = np.array([g[2] for g in group] + [group[0][2]] * pad, np.int32)
  weights = np.array([1.0] * n + [0.0] * pad, np.float32)
  ys, xs, weights = (a.reshape(passes, per_pass) for a in (ys, xs, weights))

  def one_pass(canvas, chunk):
    y, x, weight = chunk
    crops = [jax.lax.dynamic_slice(image, (0, y[j], x[j], 0), (b, h, w, channels))
             for j in range(per_pass)]
    logits = logits_fn(jnp.concatenate(crops))

    def add(canvas, logits):
      probs = jax.nn.softmax(resize_bilinear(logits.astype(jnp.float32), (h, w)), axis=-1)
      probs = probs.reshape((per_pass, b, h, w, probs.shape[-1]))
      for j in range(per_pass):
        start = (0, y[j], x[j], 0)
        old = jax.lax.dynamic_slice(canvas, start, probs.shape[1:])
        canvas = jax.lax.dynamic_update_slice(canvas, old + weight[j] * probs[j], start)
      return canvas

    return jax.tree.map(add, canvas, logits), None

  if passes == 1:
    return one_pass(canvas, (ys[0], xs[0], weights[0]))[0]
  return jax.lax.scan(one_pass, canvas, (ys, xs, weights))[0]


def make_predict_step(model: nn.Module,
                      heads: Optional[Mapping[str, Callable]] = None, *,
                      window: Optional[int] = None, stride: Optional[int] = None,
                      window_batch: int = 0, grid: str = "release",
                      domain: Optional[int] = None
                      ) -> Callable[..., Dict[str, jax.Array]]:
  """Builds the per-device prediction step that evaluation and `ddfp_jax.predict` share.

  Args:
    model: a `DeepLabV3Plus`, or with `domain` a `MultiDomainSegmenter`; run in
      inference mode (running BN statistics, no dropout).
    heads: a method's extra heads, {name: head(head_state, v) -> class scores} on the
      clean features v (main BatchNorm), e.g. DDFP's FlowGMM ("flow"); with `domain`, v
      is the shared encoder's output. The heads run only when the step also receives
      their state.
    window: None predicts the whole image at once. Otherwise the side of the square
      sliding windows (`sliding_window_scores`); the heads' scores are summed over the
      same windows.
    stride: distance between window starts; None: `window_stride(window, 2 / 3)`.
    window_batch: windows per forward pass, 0 for all windows of a shape at once.
    grid: window placement rule, "release" or "shifted" (`window_spans`).
    domain: None for a single-domain model; else the index of the `MultiDomainSegmenter`
      head that scores the images (USSS: an image of domain d is read from head d).

  Returns:
    `predict_step(variables, head_state, image, size=None) -> {"model": (B, H, W) int32,
    and one entry per head that ran}`: class maps at `size` (default the image's; a
    sliding window needs the image's), `variables` the model's ({"params",
    "batch_stats"}), `head_state` what the heads read (a method's extra state) or None.
    Whether the heads run is decided at trace time from `heads` and `head_state is None`.
  """
  heads = dict(heads or {})
  if window is not None:
    stride = window_stride(window, 2 / 3) if stride is None else stride
    window_spans(window, window, stride, grid)  # fail at build time, not at trace time

  def predict_step(variables, head_state, image, size=None) -> Dict[str, jax.Array]:
    size = tuple(image.shape[1:3]) if size is None else tuple(size)
    extra_heads = heads if head_state is not None else {}

    def scores(x):
      if domain is None:
        u = model.apply(variables, x, False, method="encode")
        v = model.apply(variables, u, False, method="features")
        logits = {"model": model.apply(variables, v, method="classify")}
      else:
        v = model.apply(variables, x, False, method="encode")
        logits = {"model": model.apply(variables, v, domain, method="classify")}
      for name, head in extra_heads.items():
        logits[name] = head(head_state, v)
      return logits

    if window is None:
      return {key: predict(logits, size) for key, logits in scores(image).items()}
    if tuple(image.shape[1:3]) != size:
      raise ValueError(f"sliding-window evaluation needs labels of the image's size, "
                       f"got image {image.shape[1:3]} and label {size}.")
    windows = window_grid(size[0], size[1], window, stride, grid)
    summed = sliding_window_scores(scores, image, windows, window_batch)
    return {key: jnp.argmax(s, axis=-1).astype(jnp.int32) for key, s in summed.items()}

  return predict_step


def make_eval_step(model: nn.Module, num_classes: int,
                   heads: Optional[Mapping[str, Callable]] = None,
                   axis_name: Optional[str] = "batch",
                   ignore_label: int = 255, num_predictions: Optional[int] = None,
                   **predict_kwargs
                   ) -> Callable[[Any, Any, Batch], Dict[str, jax.Array]]:
  """Builds the per-device evaluation step: `make_predict_step`'s class maps, counted.

  Args:
    model, heads: as `make_predict_step`.
    num_classes: K.
    axis_name: the pmap axis to psum over; None for a plain single-device call.
    ignore_label: label value that is never counted.
    num_predictions: P, the model's output channels when it has more than K (USSS's
      "None" channel: such predictions count as false negatives of their true class
      only, `metrics.confusion_matrix`); None for K.
    **predict_kwargs: `window`, `stride`, `window_batch`, `grid`, `domain` of
      `make_predict_step`.

  Returns:
    `eval_step(variables, head_state, batch) -> {"confusion": (K, P) int32, and
    "<name>_confusion" for each head}`; `batch` holds "image" (B, H, W, 3) float32,
    "label" (B, H, W) int and optionally "valid" (B,) bool.
  """
  predict_step = make_predict_step(model, heads, **predict_kwargs)

  def eval_step(variables, head_state, batch: Batch) -> Dict[str, jax.Array]:
    label = batch["label"]
    preds = predict_step(variables, head_state, batch["image"], label.shape[1:3])
    out = {("confusion" if key == "model" else f"{key}_confusion"):
           metrics.confusion_matrix(pred, label, num_classes, ignore_label,
                                    batch.get("valid"), num_predictions)
           for key, pred in preds.items()}
    if axis_name is not None:
      out = jax.lax.psum(out, axis_name)
    return out

  return eval_step


def predict_kwargs_from_config(config) -> Dict[str, Any]:
  """`make_predict_step`'s protocol arguments for `config.data.eval_protocol`.

  "whole" and "center_crop" predict the image as it comes (a centre crop is made by the
  input pipeline); "sliding_window" uses windows of `data.eval_window` with stride
  `window_stride(eval_window, eval_stride_ratio)`, `data.eval_window_batch` windows per
  pass, placed by `data.eval_window_grid`.

  Raises:
    ValueError: for an unknown protocol.
  """
  data = config.data
  if data.eval_protocol in ("whole", "center_crop"):
    return {}
  if data.eval_protocol == "sliding_window":
    return dict(window=data.eval_window,
                stride=window_stride(data.eval_window, data.eval_stride_ratio),
                window_batch=data.eval_window_batch, grid=data.eval_window_grid)
  raise ValueError(f"data.eval_protocol must be one of {PROTOCOLS}, "
                   f"got {data.eval_protocol!r}.")


def eval_step_from_config(config, model: nn.Module,
                          heads: Optional[Mapping[str, Callable]] = None,
                          axis_name: Optional[str] = "batch"
                          ) -> Callable[[Any, Any, Batch], Dict[str, jax.Array]]:
  """`make_eval_step` for the protocol of `config.data.eval_protocol`
  (`predict_kwargs_from_config`).

  Raises:
    ValueError: for an unknown protocol or grid rule, or a bad window / stride.
  """
  return make_eval_step(model, config.data.num_classes, heads=heads, axis_name=axis_name,
                        ignore_label=config.data.ignore_label,
                        **predict_kwargs_from_config(config))


def summarize(confusion, prefix: str = "") -> Dict[str, Any]:
  """mIoU, per-class IoU, pixel accuracy and the int64 confusion matrix, keys prefixed."""
  confusion = np.asarray(confusion, np.int64)
  miou, per_class = metrics.iou_from_confusion(confusion)
  return {prefix + "miou": miou, prefix + "per_class_iou": per_class,
          prefix + "pixel_accuracy": metrics.pixel_accuracy(confusion),
          prefix + "confusion": confusion}


def evaluate(p_eval_step: Callable, variables, batches: Iterable[Batch],
             head_state=None) -> Dict[str, Any]:
  """Runs the pmapped step over every batch and sums the confusion matrices on the host.

  Args:
    p_eval_step: `jax.pmap(make_eval_step(...), axis_name=..., in_axes=(None, None, 0))`
      or any callable with that signature whose outputs carry a leading device axis.
    variables: model variables, in the layout `p_eval_step` expects (unreplicated with
      `in_axes=None`).
    batches: iterable of dicts of arrays shaped (D, B, ...), D the local device count.
    head_state: what the step's extra heads read (a method's extra state), or None.

  Returns:
    {"miou", "per_class_iou", "pixel_accuracy", "confusion"} (confusion as int64), and
    the same keys prefixed "<head>_" for each extra head that ran. Raises if `batches`
    is empty.
  """
  totals: Dict[str, np.ndarray] = {}
  for batch in batches:
    out = p_eval_step(variables, head_state, batch)
    for key, value in out.items():
      # The psum left every device the same global counts: device 0's copy is the total.
      value = np.asarray(jax.device_get(value))
      if value.ndim == 3:
        value = value[0]
      totals[key] = totals.get(key, 0) + value.astype(np.int64)
  if not totals:
    raise ValueError("no validation batches")
  results = summarize(totals.pop("confusion"))
  for key, confusion in sorted(totals.items()):
    results.update(summarize(confusion, key[:-len("confusion")]))
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
