"""Cityscapes (fine annotations) as a TFDS builder reading the user's extracted files.

Labels are stored as the 19 train ids of the official cityscapesScripts label table
(`cityscapesscripts.helpers.labels`), with 255 for every ignored class. The table is read
at import, never copied, so the mapping is exactly the benchmark's.

Examples are named by their canonical id `<city>/<city>_<seq>_<frame>` (see
`ddfp_jax.data.splits`) so that split lists can select them, and are written in sorted
name order; the builder's metadata records that order per split (`example_names`).
"""

import numpy as np
import tensorflow as tf
from cityscapesscripts.helpers import labels as cs_labels

from ddfp_jax.data.segmentation_info import (FilesBuilder, label_coding,
                                             paired_files_layout)

NUM_CLASSES = 19
IGNORE_LABEL = 255
# builder split -> (image folder, label folder)
FOLDERS = {"train": ("leftImg8bit/train", "gtFine/train"),
           "validation": ("leftImg8bit/val", "gtFine/val")}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

PREPARE_HELP = (
    "To get it: log in at https://www.cityscapes-dataset.com/downloads/, download "
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, extract both into one "
    "directory DIR (`unzip -q leftImg8bit_trainvaltest.zip -d DIR && unzip -q "
    "gtFine_trainvaltest.zip -d DIR`), then run `python -m ddfp_jax.data.prepare "
    "--dataset cityscapes --manual_dir DIR --data_dir TFDS_DIR`.")
EXPECTED_LAYOUT = (
    "DIR/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png with the "
    "matching DIR/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png, "
    "e.g. leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png and "
    "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")


def _train_id_lut() -> np.ndarray:
  """Raw label id -> train id for ids 0..255; 255 for ignored and unknown ids."""
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  for label in cs_labels.labels:
    # id -1 (license plate) is never drawn into labelIds PNGs; ignored classes keep 255.
    if 0 <= label.id < 256 and label.trainId not in (255, -1) and not label.ignoreInEval:
      lut[label.id] = label.trainId
  train_ids = sorted(set(lut[lut != IGNORE_LABEL].tolist()))
  if train_ids != list(range(NUM_CLASSES)):
    raise RuntimeError(f"cityscapesscripts' label table gives train ids {train_ids}, not "
                       f"0..{NUM_CLASSES - 1}; install cityscapesscripts==2.3.0.")
  return lut


TRAIN_ID_LUT = _train_id_lut()
# Raw ids a valid labelIds PNG can contain: every non-negative id of the table (0..33).
KNOWN_LABEL_IDS = frozenset(label.id for label in cs_labels.labels if label.id >= 0)
CLASS_NAMES = tuple(
    label.name for label in sorted(cs_labels.labels, key=lambda l: l.trainId)
    if 0 <= label.trainId < NUM_CLASSES and not label.ignoreInEval)


def map_label_ids(label_ids):
  """Maps raw Cityscapes label ids to train ids (0..18, 255 = ignore).

  Ids the table marks as ignored (0..6 void, 9, 10, 14-16, 18, 29, 30) map to 255, and so
  does any value outside the table: negative ids (the table's -1, license plate, which
  labelIds PNGs never contain), 34..255, and anything beyond uint8. Such values cannot
  occur in a valid gtFine `*_labelIds.png`; the builder rejects files that contain them
  (`read_train_ids`) rather than turning a wrong file into ignore pixels.

  Args:
    label_ids: integer NumPy array (or anything `np.asarray` accepts) or `tf.Tensor`.

  Returns:
    uint8 train ids of the same shape, of the same kind (NumPy or TF) as the input.
  """
  if isinstance(label_ids, (tf.Tensor, tf.Variable)):
    if not (label_ids.dtype.is_integer):
      raise TypeError(f"label ids must be integers, got {label_ids.dtype.name}")
    ids = tf.cast(label_ids, tf.int64)
    inside = (ids >= 0) & (ids < 256)
    mapped = tf.gather(tf.constant(TRAIN_ID_LUT), tf.clip_by_value(ids, 0, 255))
    return tf.where(inside, mapped, tf.constant(IGNORE_LABEL, tf.uint8))
  ids = np.asarray(label_ids)
  if ids.dtype == np.uint8:
    return TRAIN_ID_LUT[ids]
  if not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f"label ids must be integers, got {ids.dtype}")
  inside = (ids >= 0) & (ids < 256)
  return np.where(inside, TRAIN_ID_LUT[np.clip(ids, 0, 255)], IGNORE_LABEL).astype(np.uint8)


LABELS = label_coding(
    {label_id: TRAIN_ID_LUT[label_id] for label_id in KNOWN_LABEL_IDS}, "Cityscapes labelIds",
    "Cityscapes label id (0..33)",
    "Use the *_gtFine_labelIds.png files of gtFine_trainvaltest.zip unchanged.")


def read_train_ids(label_path: str) -> np.ndarray:
  """The train-id map (H, W) uint8 of a `*_gtFine_labelIds.png`.

  Raises:
    LayoutError: if the file is not a single-channel image of raw label ids.
    LabelError: if it holds values that are no label id (e.g. a colour or instance PNG
      put in its place).
  """
  return LABELS.read(label_path)


# The examples of each split, paired by name and sorted, and their counts (see
# `paired_files_layout`).
find_examples, check_layout = paired_files_layout(
    "Cityscapes", FOLDERS, IMAGE_SUFFIX, LABEL_SUFFIX, "city", EXPECTED_LAYOUT, PREPARE_HELP)


class DdfpCityscapes(FilesBuilder):
  """Cityscapes fine annotations: 2975 train and 500 validation images, 19 classes."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Log in at https://www.cityscapes-dataset.com/downloads/ and download "
      "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip. Extract both into one "
      "directory, the manual_dir, so that it holds leftImg8bit/{train,val}/<city>/ and "
      "gtFine/{train,val}/<city>/.")
  HOMEPAGE = "https://www.cityscapes-dataset.com"

  _find_examples = staticmethod(find_examples)
  _read_label = staticmethod(read_train_ids)
