"""Pascal VOC 2012 segmentation as a TFDS builder reading the user's extracted files.

Two builder configs of `ddfp_voc`:

- `classic`: train = the 1464 ids of `ImageSets/Segmentation/train.txt` with their
  `SegmentationClass` labels.
- `blended`: train = every id with an SBD-derived `SegmentationClassAug` label that is not
  a validation id (10582 images in the standard "aug" set of CPS/UniMatch).

Both have validation = the 1449 ids of `ImageSets/Segmentation/val.txt` with their
`SegmentationClass` labels. The standard classic split lists take their unlabeled images
from the 10582-image set too, so the classic setting reads unlabeled images from the
`blended` train split (its labels unused).

Files, under the manual dir DIR:

    DIR/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    DIR/VOCdevkit/VOC2012/SegmentationClass/<id>.png
    DIR/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    DIR/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   (blended; or DIR/SegmentationClassAug)

Labels are class indices 0..20 with 255 on object boundaries ("ignore"). VOC's
`SegmentationClass` PNGs are palette images: the stored palette *index* is the class, and
the colours are only for display, so they are read as indices (PIL mode "P"), never via
RGB. `SegmentationClassAug` PNGs are 8-bit grayscale indices (mode "L").

Examples are named by their image id and written in sorted id order; the builder's
metadata records that order per split.
"""
import functools
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow_datasets as tfds

from ddfp_jax.data import splits
from ddfp_jax.data.errors import are_missing, describe_directory, first_few, layout_error
from ddfp_jax.data.segmentation_info import (ExampleFiles, FilesBuilder, example_counts,
                                             label_coding)

NUM_CLASSES = 21
IGNORE_LABEL = 255
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")
CONFIGS = ("classic", "blended")
VOC_SUBDIR = os.path.join("VOCdevkit", "VOC2012")
AUG_DIRNAME = "SegmentationClassAug"

PREPARE_HELP = (
    "To get it: download VOCtrainval_11-May-2012.tar from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and extract it into a directory DIR "
    "(`tar -xf VOCtrainval_11-May-2012.tar -C DIR`, which creates DIR/VOCdevkit/VOC2012); "
    "for the blended set also put the SBD-derived SegmentationClassAug label folder (the "
    "10582 train_aug + 1449 val PNGs used by CPS/UniMatch) in DIR/VOCdevkit/VOC2012/ or in "
    "DIR/; then run `python -m ddfp_jax.data.prepare --dataset pascal (or pascal_blended) "
    "--manual_dir DIR --data_dir TFDS_DIR`.")


def color_palette(num: int = 256) -> np.ndarray:
  """VOC's colour map, (num, 3) uint8: bits of the index spread over R, G, B, high first."""
  palette = np.zeros((num, 3), np.uint8)
  for index in range(num):
    c, rgb = index, [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
      c >>= 3
    palette[index] = rgb
  return palette


LABELS = label_coding(
    {**{c: c for c in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL}, "VOC label",
    f"VOC class index (0..{NUM_CLASSES - 1}, or {IGNORE_LABEL} for boundaries)",
    "Use the original SegmentationClass / SegmentationClassAug files.")


def read_class_indices(label_path: str) -> np.ndarray:
  """The class-index map (H, W) uint8 of a VOC or SBD-aug label PNG.

  Raises:
    LayoutError: naming the file, if it is not a palette/grayscale index image.
    LabelError: naming the file, if it holds values outside 0..20 and 255.
  """
  return LABELS.read(label_path)


EXPECTED_LAYOUT = (
    "DIR/VOCdevkit/VOC2012/ holding JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
    "ImageSets/Segmentation/{train,val}.txt (e.g. JPEGImages/2007_000032.jpg), and for the "
    "blended set SegmentationClassAug/<id>.png in it or in DIR")


# (root, problem) -> the one-paragraph LayoutError
_layout_error = functools.partial(layout_error, "Pascal VOC 2012", expected=EXPECTED_LAYOUT,
                                  how_to_get=PREPARE_HELP)


def find_aug_dir(root: str) -> Optional[str]:
  """The SegmentationClassAug folder: in VOCdevkit/VOC2012/ or in `root`; None if absent.

  Raises:
    LayoutError: if both places hold one (which of them is meant would be a guess).
  """
  candidates = [os.path.join(root, VOC_SUBDIR, AUG_DIRNAME), os.path.join(root, AUG_DIRNAME)]
  found = [c for c in candidates if os.path.isdir(c)]
  if len(found) == 2 and not os.path.samefile(*found):
    raise _layout_error(root, f"there are two {AUG_DIRNAME} folders, {found[0]} and "
                              f"{found[1]}; keep one")
  return found[0] if found else None


def _pngs(directory: str) -> List[str]:
  return sorted(f[:-4] for f in os.listdir(directory) if f.endswith(".png"))


def find_examples(root: str, config: str) -> Dict[str, List[ExampleFiles]]:
  """The image/label files of each builder split of `config` under `root`, by id.

  Raises:
    LayoutError: (one paragraph) naming what is missing.
  """
  if config not in CONFIGS:
    raise ValueError(f"Unknown VOC builder config {config!r}; expected one of {CONFIGS}.")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise _layout_error(root, "the directory does not exist")
  voc = os.path.join(root, VOC_SUBDIR)
  if not os.path.isdir(voc):
    where = voc if os.path.isdir(os.path.dirname(voc)) else root
    raise _layout_error(root, f"{VOC_SUBDIR} is missing ({describe_directory(where, where)})")
  sets = os.path.join("ImageSets", "Segmentation")
  needed = ["JPEGImages", "SegmentationClass", os.path.join(sets, "train.txt"),
            os.path.join(sets, "val.txt")]
  missing = [n for n in needed if not os.path.exists(os.path.join(voc, n))]
  # The classic set never reads the aug labels, so their placement does not concern it.
  aug_dir = find_aug_dir(root) if config == "blended" else None
  if config == "blended" and aug_dir is None:
    missing.append(f"{AUG_DIRNAME} (in {VOC_SUBDIR} or in {root})")
  if missing:
    raise _layout_error(root, f"{are_missing(missing)} in {voc}")

  val_ids = splits.read_split_list(os.path.join(voc, sets, "val.txt"), "pascal")
  if config == "classic":
    train_ids = splits.read_split_list(os.path.join(voc, sets, "train.txt"), "pascal")
    train_labels = os.path.join(voc, "SegmentationClass")
  else:
    val_set = set(val_ids)
    train_ids = [i for i in _pngs(aug_dir) if i not in val_set]
    train_labels = aug_dir
    if not train_ids:
      raise _layout_error(root, f"{aug_dir} holds no label PNGs outside val.txt")

  lacking = []

  def files(ids, label_dir):
    out = []
    for example_id in sorted(ids):
      image = os.path.join(voc, "JPEGImages", example_id + ".jpg")
      label = os.path.join(label_dir, example_id + ".png")
      absent = [p for p in (image, label) if not os.path.isfile(p)]
      lacking.extend(os.path.relpath(p, root) for p in absent)
      if not absent:
        out.append(ExampleFiles(example_id, image, label))
    return out

  examples = {"train": files(train_ids, train_labels),
              "validation": files(val_ids, os.path.join(voc, "SegmentationClass"))}
  if lacking:
    raise _layout_error(root, f"{len(lacking)} files named by the image lists are missing: "
                              f"{first_few(lacking)}")
  return examples


# check_layout(root, config): the number of examples per split of `config`.
check_layout = example_counts(find_examples)


class DdfpVoc(FilesBuilder):
  """Pascal VOC 2012 segmentation, classic (1464) or blended with SBD (10582); 21 classes."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="classic", description="train: the 1464 train.txt "
                              "images with SegmentationClass labels."),
      tfds.core.BuilderConfig(name="blended", description="train: the 10582 images with "
                              "SBD-derived SegmentationClassAug labels, val.txt excluded."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download VOCtrainval_11-May-2012.tar from "
      "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and extract it into the manual_dir, "
      "which then holds VOCdevkit/VOC2012/. For the blended config also put the "
      "SBD-derived SegmentationClassAug folder (label PNGs of the 10582-image set and of "
      "val) in manual_dir/VOCdevkit/VOC2012/ or in manual_dir/.")
  HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
  IMAGE_FORMAT = "jpeg"

  def _find_examples(self, root):
    return find_examples(root, self.builder_config.name)

  _read_label = staticmethod(read_class_indices)
