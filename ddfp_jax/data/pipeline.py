"""Deterministic, resumable train batches and complete eval passes, sharded by process.

Training draws, at every global step s, a global batch of labeled and unlabeled examples
and gives each process a contiguous slice of it. Which examples and how they are
augmented depend only on (config.seed, s, position in the global batch, stream):

- Example order: epoch e = s // config.steps_per_epoch. Its unlabeled order is the
  concatenation of NumPy `RandomState` permutations of the unlabeled set, each seeded by
  (seed, stream, e, pass), cut to steps_per_epoch x global batch ids: a set smaller than
  an epoch's demand is cycled with a fresh permutation per pass, a larger one is sampled
  by the epoch's permutation. The labeled stream is built the same way, so it is repeated
  (a new permutation every pass) to match the unlabeled stream, as in the release.
  `RandomState` permutations are frozen by NumPy's compatibility policy, so orders are
  reproducible across NumPy versions. The source is `Dataset.range(start_step, ...)`;
  each step's ids come from NumPy through `tf.numpy_function`, a pure function of the step.
- Augmentation: each example's shape-[2] seed is
  fold_in(fold_in((seed, stream), step), position) with TensorFlow's stateless ops.

So the batch of step s is the same whether the iterator started at 0 or at s (exact
resume), and the same global batch is seen whatever the split into processes and
devices. Parallel `map`s keep their order (`deterministic=True`).

Evaluation makes one pass in index order; the last global batch is padded with copies of
the first example marked `valid=False`, never dropped.

Examples are read by index from a `ddfp_jax.data.sources.Source`: the demo set from
memory, the real datasets from their prepared TFDS files (decoded inside the parallel
map), so both take exactly the same path through sampling and augmentation.

Evaluation follows `config.data.eval_protocol`: "center_crop" (VOC) pads and crops each
image here; "whole" and "sliding_window" (Cityscapes) pass full images, batched with
padding (label 255, `valid` unchanged) if sizes differ within a batch. Before either,
`config.data.eval_scale` rescales validation images (bilinear, as training's rescale) and
labels (nearest), so that scores are taken at that resolution (USSS's release).
"""
import atexit
import functools
import re
import weakref
from typing import Dict, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf

from ddfp_jax.data import augment
from ddfp_jax.data import sources
from ddfp_jax.data.protocols import PROTOCOLS
# One error class for every data problem; re-exported for the trainer and main.py.
from ddfp_jax.data.errors import DatasetError, LabelError

_LABELED, _UNLABELED = 0, 1
# Leads the message of the label check's assertion, so that `Batches` can tell it apart.
_LABEL_CHECK = "label values outside the classes"


def _load_checked(source: sources.Source, index, num_classes: int, ignore: int):
  """`source.load(index)`, stopping the pipeline (see `Batches`) if the label holds a value
  that is neither a class id nor `ignore`."""
  image, label = source.load(index)
  bad = tf.logical_and(label >= num_classes, label != ignore)
  values, _ = tf.unique(tf.boolean_mask(label, bad))
  check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                              [_LABEL_CHECK, source.name(index), values], summarize=20)
  with tf.control_dependencies([check]):
    return image, tf.identity(label)


def _label_error(message: str, config) -> Optional[LabelError]:
  found = re.search(re.escape(_LABEL_CHECK) + r"\] \[(.*?)\] \[(.*?)\]", message)
  if found is None:
    return None
  name, values = found.group(1), ", ".join(found.group(2).split())
  return LabelError(
      f"The label map of {name} holds the value(s) {values}, which are neither a class id "
      f"(0 to {config.data.num_classes - 1}, data.num_classes={config.data.num_classes}) "
      f"nor the ignore label ({config.data.ignore_label}). Either data.num_classes or "
      "data.ignore_label does not fit this dataset (see its config in configs/), or the "
      "label file is damaged or not a class-id map (real data: prepare it again with "
      "`python -m ddfp_jax.data.prepare` from intact files).")


# Every open Batches, closed at exit (see the class docstring).
_OPEN: "weakref.WeakSet[Batches]" = weakref.WeakSet()


class Batches:
  """The batches of a tf.data pipeline as dicts of NumPy arrays; `close()` stops its
  threads.

  tf.data's parallel-map and prefetch threads keep running, and calling into Python
  (tf.numpy_function), as long as the iterator lives; one still alive when the interpreter
  shuts down can keep it from ever exiting. `close()`, the end of a `with` block, running
  out of batches or the end of the program (an atexit hook closes every open one) drops
  the iterator, which cancels them. A label outside the classes (`_load_checked`) comes
  out of `next` as a `LabelError`.
  """

  def __init__(self, dataset: tf.data.Dataset, config):
    self._iterator = iter(dataset.as_numpy_iterator())
    self._config = config
    _OPEN.add(self)

  def __iter__(self) -> "Batches":
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    try:
      return next(self._iterator)
    except StopIteration:
      self.close()
      raise
    except tf.errors.InvalidArgumentError as e:
      error = _label_error(e.message, self._config)
      if error is None:
        raise
      self.close()
      raise error from None

  def close(self) -> None:
    self._iterator = None
    _OPEN.discard(self)

  def __enter__(self) -> "Batches":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


@atexit.register
def _close_all() -> None:
  for batches in list(_OPEN):
    batches.close()


def _check_config(config) -> None:
  sources.check_dataset(config)
  if config.data.shuffle_buffer:
    raise DatasetError(
        f"config.data.shuffle_buffer={config.data.shuffle_buffer} is not supported: the "
        "pipeline always uses an exact per-epoch permutation (which keeps it deterministic "
        "and resumable). Set it to 0.")
  if config.data.eval_protocol not in PROTOCOLS:
    raise DatasetError(f"config.data.eval_protocol={config.data.eval_protocol!r} is not one "
                       f"of {PROTOCOLS}.")


def prepare(config) -> None:
  """Makes the dataset's files ready (see `sources.prepare`); call on one process first."""
  _check_config(config)
  sources.prepare(config)


def num_train_examples(config) -> Tuple[int, int]:
  """(labeled, unlabeled) examples of the training streams."""
  _check_config(config)
  labeled, unlabeled = sources.train_sources(config)
  return labeled.size, unlabeled.size


def num_eval_examples(config, split: str = "validation") -> int:
  """Number of examples in `split`; every one is evaluated exactly once."""
  _check_config(config)
  return sources.eval_source(config, split).size


def _epoch_order(seed: int, stream: int, epoch: int, num_examples: int,
                 length: int) -> np.ndarray:
  """Example ids of one epoch of a stream: fresh permutations, concatenated, cut."""
  passes = -(-length // num_examples)
  perms = []
  for p in range(passes):
    state = np.random.SeedSequence([seed, stream, epoch, p]).generate_state(4)
    perms.append(np.random.RandomState(state).permutation(num_examples))
  return np.concatenate(perms)[:length].astype(np.int32)


def _example_seed(seed: int, stream: int, step: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
  base = tf.constant([seed, stream], tf.int64)
  key = tf.random.experimental.stateless_fold_in(base, step, alg=augment.ALG)
  return tf.random.experimental.stateless_fold_in(key, tf.cast(position, tf.int64),
                                                  alg=augment.ALG)


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise DatasetError(f"process_index={process_index} is outside [0, process_count="
                       f"{process_count}).")


def _num_local_devices(local_device_count: Optional[int]) -> int:
  return jax.local_device_count() if local_device_count is None else int(local_device_count)


def _stream(config, source: sources.Source, stream: int, per_device: int, start_step: int,
            process_index: int, process_count: int, devices: int, augment_fn) -> tf.data.Dataset:
  """Per-step batches (devices * per_device examples) of one stream, augmented."""
  local = devices * per_device
  global_batch = local * process_count
  local_slice = slice(process_index * local, (process_index + 1) * local)
  seed = int(config.seed)
  steps_per_epoch = int(config.steps_per_epoch)
  positions = np.arange(global_batch, dtype=np.int32)[local_slice]
  num_classes, ignore = int(config.data.num_classes), int(config.data.ignore_label)

  @functools.lru_cache(maxsize=2)
  def epoch_order(epoch: int) -> np.ndarray:
    return _epoch_order(seed, stream, epoch, source.size, steps_per_epoch * global_batch)

  def ids_for_step(step: np.ndarray) -> np.ndarray:
    offset = (int(step) % steps_per_epoch) * global_batch
    return epoch_order(int(step) // steps_per_epoch)[offset:offset + global_batch][local_slice]

  def step_examples(step):
    # The order is NumPy's; a pure function of the step, so tf.data may run it anywhere.
    ids = tf.numpy_function(ids_for_step, [step], tf.int32, stateful=False)
    ids.set_shape([local])
    return {"step": tf.fill([local], step), "position": tf.constant(positions), "id": ids}

  def load_and_augment(element):
    example_seed = _example_seed(seed, stream, element["step"], element["position"])
    image, label = _load_checked(source, element["id"], num_classes, ignore)
    return augment_fn(image, label, example_seed)

  ds = tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max)
  ds = ds.map(step_examples).unbatch()
  ds = ds.map(load_and_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True)


def weak_augment(image, label, seed, data, ignore=None):
  """Random rescale, crop with padding, flip: the weak view of either stream."""
  s_rescale, s_crop, s_flip = augment.split_seed(seed, 3)
  image, label, ignore = augment.random_rescale_crop(
      image, label, ignore, s_rescale, s_crop, data.scale_range, int(data.crop_size),
      label_pad=int(data.ignore_label))
  return augment.random_flip(image, label, ignore, s_flip, float(data.flip_prob))


def train_batches(config, *, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1,
                  local_device_count: Optional[int] = None) -> Batches:
  """Infinite iterator of this process's share of the training batches from `start_step`.

  Args:
    config: the experiment config (`config.seed`, `config.steps_per_epoch`, `config.data`).
    start_step: global step of the first batch; the batches equal those an iterator started
      at 0 yields from that step on.
    process_index: this process's index; it gets slice `process_index` of the global batch.
    process_count: number of processes sharing the global batch.
    local_device_count: devices of this process (default `jax.local_device_count()`).

  Yields:
    Dicts of NumPy arrays with a leading device axis D, C = crop_size,
    Bl = labeled_per_device, Bu = unlabeled_per_device:
      labeled_image float32 (D, Bl, C, C, 3), normalised;
      labeled_label int32 (D, Bl, C, C), ignore_label on padding;
      unlabeled_weak float32 (D, Bu, C, C, 3), normalised;
      unlabeled_strong float32 (D, Bu, C, C, 3), normalised, same geometry as weak;
      unlabeled_ignore int32 (D, Bu, C, C), 255 on padding, 0 elsewhere.
  """
  _check_config(config)
  _check_process(process_index, process_count)
  data = config.data
  devices = _num_local_devices(local_device_count)
  bl, bu = int(data.labeled_per_device), int(data.unlabeled_per_device)
  mean, std = tuple(data.mean), tuple(data.std)
  strong_kwargs = dict(
      color_jitter_prob=float(data.color_jitter_prob), brightness=float(data.brightness),
      contrast=float(data.contrast), saturation=float(data.saturation),
      hue=float(data.hue), grayscale_prob=float(data.grayscale_prob),
      blur_prob=float(data.blur_prob), blur_sigma=tuple(data.blur_sigma))

  def labeled_fn(image, label, seed):
    image, label, _ = weak_augment(image, label, seed, data)
    return augment.normalize(image, mean, std), tf.cast(label, tf.int32)

  def unlabeled_fn(image, label, seed):
    s_weak, s_strong = augment.split_seed(seed, 2)
    # As the release, the unlabeled "label" is a zero map that padding turns into 255.
    image, ignore, _ = weak_augment(image, tf.zeros_like(label), s_weak, data)
    strong = augment.strong_augment(image, s_strong, **strong_kwargs)
    return (augment.normalize(image, mean, std), augment.normalize(strong, mean, std),
            tf.cast(ignore, tf.int32))

  common = dict(start_step=start_step, process_index=process_index,
                process_count=process_count, devices=devices)
  labeled_source, unlabeled_source = sources.train_sources(config)
  labeled = _stream(config, labeled_source, _LABELED, bl, augment_fn=labeled_fn, **common)
  unlabeled = _stream(config, unlabeled_source, _UNLABELED, bu, augment_fn=unlabeled_fn,
                      **common)

  def to_devices(lab, unlab):
    def split(x, per_device):
      return tf.reshape(x, [devices, per_device] + x.shape[1:])
    return {"labeled_image": split(lab[0], bl), "labeled_label": split(lab[1], bl),
            "unlabeled_weak": split(unlab[0], bu), "unlabeled_strong": split(unlab[1], bu),
            "unlabeled_ignore": split(unlab[2], bu)}

  ds = tf.data.Dataset.zip(labeled, unlabeled).map(to_devices)
  ds = ds.prefetch(int(data.prefetch) if data.prefetch else tf.data.AUTOTUNE)
  return Batches(ds, config)


def eval_positions(num_examples: int, batch_per_process: int, process_index: int,
                   process_count: int) -> Tuple[np.ndarray, np.ndarray]:
  """This process's example ids and validity, step by step, for one complete pass.

  The global eval batch is process_count x batch_per_process examples; process p takes
  the contiguous slice p of every global batch. Positions past the end are padding: id 0,
  valid False.
  """
  global_batch = batch_per_process * process_count
  steps = max(1, -(-num_examples // global_batch))
  positions = np.arange(steps * global_batch).reshape(steps, process_count, batch_per_process)
  positions = positions[:, process_index].reshape(-1)
  valid = positions < num_examples
  return np.where(valid, positions, 0).astype(np.int32), valid


def eval_batches(config, split: str = "validation", *, process_index: int = 0,
                 process_count: int = 1,
                 local_device_count: Optional[int] = None) -> Batches:
  """One pass over `split`, full images, every example exactly once across processes.

  Args:
    config: the experiment config.
    split: split to evaluate.
    process_index: this process's index.
    process_count: number of processes.
    local_device_count: devices of this process (default `jax.local_device_count()`).

  Yields:
    Dicts of NumPy arrays, Be = eval_per_device, D devices:
      image float32 (D, Be, H, W, 3), normalised;
      label int32 (D, Be, H, W);
      valid bool (D, Be): False on padding (copies of the first example).
    Every process yields the same number of batches.
  """
  _check_config(config)
  _check_process(process_index, process_count)
  data = config.data
  source = sources.eval_source(config, split)
  devices = _num_local_devices(local_device_count)
  be = int(data.eval_per_device)
  ids, valid = eval_positions(source.size, devices * be, process_index, process_count)
  mean, std = tuple(data.mean), tuple(data.std)
  ignore = int(data.ignore_label)
  center_crop = data.eval_protocol == "center_crop"
  scale = float(data.get("eval_scale", 1.0))

  def load(idx, ok):
    image, label = _load_checked(source, idx, int(data.num_classes), ignore)
    if scale != 1.0:
      image, label = augment.rescale(image, label, scale)
    if center_crop:
      image, label = augment.center_crop_and_pad(image, label, int(data.eval_crop),
                                                 label_pad=ignore)
    return {"image": augment.normalize(image, mean, std),
            "label": tf.cast(label, tf.int32), "valid": ok}

  def to_devices(batch):
    return {k: tf.reshape(v, tf.concat([[devices, be], tf.shape(v)[1:]], 0))
            for k, v in batch.items()}

  ds = tf.data.Dataset.from_tensor_slices((ids, valid))
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Full images of different sizes are padded to the largest of their batch (label
  # ignore_label, so the padding is never scored); equal sizes are left as they are.
  ds = ds.padded_batch(devices * be, drop_remainder=True,
                       padding_values={"image": 0.0, "label": ignore, "valid": False})
  ds = ds.map(to_devices)
  ds = ds.prefetch(int(data.prefetch) if data.prefetch else tf.data.AUTOTUNE)
  return Batches(ds, config)
