"""Where the examples of a run come from: one random-access `Source` per stream.

A `Source` is a set of examples addressed by index 0..size-1 whose `load(index)` is a
TensorFlow function (usable inside `tf.data` maps) returning the image, uint8 (H, W, 3),
and its label map, uint8 (H, W). The input pipeline only ever asks a Source for an
example by index, so the same pipeline serves:

- the demo set: each split decoded once into memory (`tf.gather`);
- the real datasets (`ddfp_jax.data.real_datasets`): the prepared TFDS files, read by
  index (ArrayRecord), images and labels decoded by TensorFlow inside the parallel map.

Which examples form the labeled and the unlabeled stream of a real dataset is decided
here, once per run, from the standard split lists (`config.data.split_dir`) or a seeded
draw (`config.data.num_labeled`, `config.data.split_seed`); see `train_split`.
"""
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ddfp_jax.data import demo
from ddfp_jax.data import real_datasets
from ddfp_jax.data import splits
from ddfp_jax.data.errors import DatasetError, SplitError

DATASETS = ("demo",) + tuple(real_datasets.DATASETS)


class Source(NamedTuple):
  """`size` examples; `load(index)` -> (image uint8 (H, W, 3), label uint8 (H, W));
  `name(index)` -> a string tensor naming the example for messages (its file id in the
  dataset, or the demo scene)."""
  size: int
  load: Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]
  name: Callable[[tf.Tensor], tf.Tensor]


def check_dataset(config) -> None:
  name = config.data.name
  if name not in DATASETS:
    raise DatasetError(f"config.data.name={name!r} is not a dataset of ddfp-jax; choose one "
                       f"of {DATASETS} (configs/demo.py, configs/ddfp/cityscapes_*.py, "
                       "configs/ddfp/pascal_*.py and configs/ddfp/pascal_blended_*.py set "
                       "it).")


# --- the demo set -------------------------------------------------------------------------

# (data_dir, builder config name, split) -> (images, labels); the name encodes the sizes
# and seed of the demo set.
_ARRAYS: Dict[Tuple[Optional[str], str, str], Tuple[np.ndarray, np.ndarray]] = {}


def demo_arrays(config, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """All of demo `split` in memory: images uint8 (N, H, W, 3), labels uint8 (N, H, W).

  Cached per (data config, split), so repeated iterators decode the split once.
  """
  if split not in demo.SPLITS:
    raise DatasetError(f"Unknown split {split!r} of the demo set; expected one of "
                       f"{demo.SPLITS}.")
  key = (config.data.data_dir, demo.builder_config_for(config).name, split)
  if key not in _ARRAYS:
    images, labels, indices = [], [], []
    for example in demo.load_demo_split(config, split).as_numpy_iterator():
      images.append(example["image"])
      labels.append(example["label"])
      indices.append(example["index"])
    order = np.argsort(indices)
    _ARRAYS[key] = (np.stack(images)[order], np.stack(labels)[order])
  return _ARRAYS[key]


def _array_source(images: np.ndarray, labels: np.ndarray, what: str) -> Source:
  """In-memory examples; `what` names them in messages ("demo validation scene")."""
  images_t, labels_t = tf.constant(images), tf.constant(labels)
  return Source(len(labels), lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i)),
                lambda i: tf.strings.format(what + " {}", i))


# --- the real datasets --------------------------------------------------------------------


def _builder_names(dataset: str) -> Tuple[str, str]:
  """(builder of the labeled stream and of validation, builder of the unlabeled stream).

  The standard Pascal classic lists take their unlabeled images from the 10582-image set,
  which only the blended builder holds.
  """
  return (dataset, "pascal_blended" if dataset == "pascal" else dataset)


def _not_prepared(config, missing: Sequence[str]) -> DatasetError:
  data_dir = config.data.data_dir or "TFDS's default data directory (~/tensorflow_datasets)"
  entry = real_datasets.DATASETS[missing[0]]
  commands = " and ".join(
      f"`python -m ddfp_jax.data.prepare --dataset {m} --manual_dir DIR"
      f"{' --data_dir ' + config.data.data_dir if config.data.data_dir else ''}`"
      for m in missing)
  return DatasetError(
      f"config.data.name={config.data.name!r} needs the prepared TFDS files of "
      f"{' and '.join(missing)} in {data_dir}, and they are not there. Prepare them once "
      f"with {commands}, where DIR holds the extracted download, or pass "
      "--config.data.manual_dir=DIR to prepare them on first use. Expected in DIR: "
      f"{entry.expected_layout}. {entry.how_to_get}")


def prepare(config) -> None:
  """Makes the files of `config.data.name` ready: the demo set is generated and decoded;
  a real dataset is prepared from `data.manual_dir` if it is not in `data.data_dir` yet.

  Call it on one process first (the others wait), so that hosts sharing a data
  directory do not write it at the same time.

  Raises:
    DatasetError: the dataset is unknown, not prepared and no manual_dir is given, or the
      files under manual_dir are missing or malformed (the message says what and where).
  """
  check_dataset(config)
  if config.data.name == "demo":
    demo_arrays(config, "labeled")
    return
  needed = sorted(set(_builder_names(config.data.name)))
  missing = [d for d in needed if not real_datasets.is_prepared(d, config.data.data_dir)]
  if missing and not config.data.manual_dir:
    raise _not_prepared(config, missing)
  for dataset in missing:
    real_datasets.prepare(dataset, config.data.manual_dir, config.data.data_dir)


# (dataset, data_dir) -> prepared builder; (dataset, data_dir, split) -> encoded records.
_BUILDERS: Dict[Tuple[str, Optional[str]], object] = {}
_RECORDS: Dict[Tuple[str, Optional[str], str], Sequence[dict]] = {}


def _builder(config, dataset: str):
  """The prepared builder of `dataset`; raises the not-prepared error otherwise."""
  key = (dataset, config.data.data_dir)
  if key not in _BUILDERS:
    builder = real_datasets.make_builder(dataset, config.data.data_dir)
    if not builder.is_prepared():
      raise _not_prepared(config, [dataset])
    _BUILDERS[key] = builder
  return _BUILDERS[key]


def _records(config, dataset: str, split: str) -> Sequence[dict]:
  key = (dataset, config.data.data_dir, split)
  if key not in _RECORDS:
    _RECORDS[key] = real_datasets.encoded_source(_builder(config, dataset), split)
  return _RECORDS[key]


def _encoded_source(config, dataset: str, split: str,
                    indices: Optional[np.ndarray] = None) -> Source:
  """Examples `indices` (default: all) of a prepared split, decoded by TensorFlow."""
  records = _records(config, dataset, split)
  indices = np.arange(len(records)) if indices is None else np.asarray(indices, np.int64)

  def read(i):
    record = records[int(indices[int(i)])]
    return record["image"], record["label"]

  def load(i):
    # Only the file read runs in Python; decoding is TensorFlow's, in parallel.
    image_bytes, label_bytes = tf.numpy_function(read, [i], (tf.string, tf.string),
                                                 stateful=False)
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    label = tf.io.decode_png(label_bytes, channels=1)[..., 0]
    image.set_shape([None, None, 3])
    return image, label

  names = tf.constant([f"{dataset} {split} example {name}" for name in
                       np.asarray(real_datasets.example_names(_builder(config, dataset),
                                                              split))[indices]])
  return Source(len(indices), load, lambda i: tf.gather(names, i))


class TrainSplit(NamedTuple):
  """Indices of the labeled examples (into the labeled builder's train split) and of the
  unlabeled ones (into the unlabeled builder's), and where the split came from."""
  labeled: np.ndarray
  unlabeled: np.ndarray
  origin: str


def _indices(names: Sequence[str], ids: Sequence[str]) -> np.ndarray:
  position = {name: i for i, name in enumerate(names)}
  return np.array([position[i] for i in ids], np.int64)


_SPLITS: Dict[tuple, TrainSplit] = {}


def train_split(config) -> TrainSplit:
  """The labeled/unlabeled split of a real dataset's training examples.

  With `data.all_labeled`, every training image of the labeled set. Otherwise from
  `data.split_dir` (standard lists; every listed example must be in the prepared
  files, and `data.num_labeled`, when positive, must equal the labeled count), or else a
  seeded draw of `data.num_labeled` labeled examples; the unlabeled stream is then every
  other training image (for Pascal classic: of the 10582-image set, as the standard lists).

  Raises:
    SplitError: unreadable or inconsistent lists, missing examples, bad num_labeled.
  """
  data = config.data
  key = (data.name, data.data_dir, data.split_dir, int(data.num_labeled),
         int(data.split_seed), bool(data.all_labeled))
  if key not in _SPLITS:
    labeled_builder, unlabeled_builder = (_builder(config, d)
                                          for d in _builder_names(data.name))
    labeled_names = real_datasets.example_names(labeled_builder, "train")
    unlabeled_names = real_datasets.example_names(unlabeled_builder, "train")
    if data.all_labeled:
      # The fully supervised upper bound: every image with a label is labeled; the
      # unlabeled stream (which a supervised run does not read) is the whole set.
      labeled, unlabeled = list(labeled_names), list(unlabeled_names)
      origin = "every training image labeled (data.all_labeled)"
    elif data.split_dir:
      split_dir = os.path.expanduser(data.split_dir)
      split = splits.split_from_directory(split_dir, data.name)
      splits.check_ids_exist(split.labeled, labeled_names, f"labeled ids of {split_dir}")
      splits.check_ids_exist(split.unlabeled, unlabeled_names,
                             f"unlabeled ids of {split_dir}")
      if data.num_labeled > 0 and len(split.labeled) != data.num_labeled:
        raise SplitError(
            f"{split_dir}/{splits.LABELED_FILE} lists {len(split.labeled)} labeled examples "
            f"but config.data.num_labeled is {data.num_labeled}: the split directory does "
            "not belong to this config. Point --config.data.split_dir at the directory of "
            f"the {data.num_labeled}-label split, or set --config.data.num_labeled=0 to take "
            "the list as it is.")
      labeled, unlabeled = split.labeled, split.unlabeled
      origin = f"split lists in {split_dir}"
    else:
      if data.num_labeled <= 0:
        raise SplitError(
            f"config.data.name={data.name!r} needs either a split directory "
            "(--config.data.split_dir=DIR holding labeled.txt and unlabeled.txt in the "
            "standard format) or the number of labeled images to draw "
            "(--config.data.num_labeled=N, seeded by data.split_seed).")
      labeled = splits.draw_seeded_split(labeled_names, int(data.num_labeled),
                                         int(data.split_seed)).labeled
      chosen = set(labeled)
      unlabeled = [n for n in unlabeled_names if n not in chosen]
      origin = (f"a seeded draw of {data.num_labeled} labeled images "
                f"(split_seed {data.split_seed})")
    if not unlabeled:
      raise SplitError(f"The split ({origin}) leaves no unlabeled images; semi-supervised "
                       "training needs some. Label fewer images.")
    _SPLITS[key] = TrainSplit(_indices(labeled_names, labeled),
                              _indices(unlabeled_names, unlabeled), origin)
  return _SPLITS[key]


# --- what the pipeline asks for -----------------------------------------------------------


def train_sources(config) -> Tuple[Source, Source]:
  """(labeled, unlabeled) Sources of the training streams."""
  check_dataset(config)
  if config.data.name == "demo":
    labeled, unlabeled = demo_arrays(config, "labeled"), demo_arrays(config, "unlabeled")
    if config.data.all_labeled:
      # The fully supervised upper bound: the unlabeled scenes' labels are used too.
      labeled = tuple(np.concatenate([a, b]) for a, b in zip(labeled, unlabeled))
    return (_array_source(*labeled, "demo " + ("labeled+unlabeled" if config.data.all_labeled
                                               else "labeled") + " scene"),
            _array_source(*unlabeled, "demo unlabeled scene"))
  split = train_split(config)
  labeled_builder, unlabeled_builder = _builder_names(config.data.name)
  return (_encoded_source(config, labeled_builder, "train", split.labeled),
          _encoded_source(config, unlabeled_builder, "train", split.unlabeled))


def eval_source(config, split: str = "validation") -> Source:
  """The Source of an evaluation split ("validation"; the demo also has its train splits)."""
  check_dataset(config)
  if config.data.name == "demo":
    return _array_source(*demo_arrays(config, split), f"demo {split} scene")
  if split not in real_datasets.SPLITS:
    raise DatasetError(f"Unknown split {split!r} of {config.data.name}; expected one of "
                       f"{real_datasets.SPLITS}.")
  return _encoded_source(config, _builder_names(config.data.name)[0], split)


def first_examples(config, num: int, split: str = "validation"
                   ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """The first `num` examples of an evaluation split as numpy (image uint8 (H, W, 3),
  label uint8 (H, W)) lists: the demo's from memory, a real dataset's decoded from its
  prepared files. Figures and the training images show them."""
  if config.data.name == "demo":
    images, labels = demo_arrays(config, split)
    return list(images[:num]), list(labels[:num])
  source = eval_source(config, split)
  pairs = [source.load(i) for i in range(min(num, source.size))]
  return [np.asarray(i) for i, _ in pairs], [np.asarray(l) for _, l in pairs]
