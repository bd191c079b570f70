"""SUN RGB-D, 37 classes, as a TFDS builder reading the user's list files and images.

Files, under the manual dir DIR:

    DIR/train37.txt, DIR/val37.txt     one line per image: `<image> ... <label>`
    DIR/<image>, DIR/<label>           the paths the lines give, relative to DIR

The image path is a line's first column and its label PNG's path the last (columns in
between, e.g. a depth map, are not read), as the USSS release reads them; paths hold no
spaces. Two label conventions exist, one builder config each:

- `one_based` (`--dataset sunrgbd`): 0 = void, 1..37 = the classes, as in the common
  37-class release (the SUN RGB-D toolbox's `seglabel` maps). Stored as v - 1, void 255.
- `zero_based` (`--dataset sunrgbd_zero_based`): 0..36 = the classes, 255 = void, what the
  USSS release's code implies. Stored unchanged.

A file holding a value the chosen convention lacks stops preparation and names the other
config; since every real set holds void pixels and class 37 (bag) somewhere, a set
prepared with the wrong convention fails rather than shifting its classes.

Examples are named by the image path without its extension (`ddfp_jax.data.splits`),
written in sorted name order (not list order); the builder's metadata records that order
per split. Splits: train (train37.txt) and validation (val37.txt, every line of it).
"""
import functools
import os
from typing import Dict, List

import tensorflow_datasets as tfds

from ddfp_jax.data import splits
from ddfp_jax.data.errors import (SplitError, are_missing, describe_directory, first_few,
                                  layout_error)
from ddfp_jax.data.segmentation_info import (IGNORE_LABEL, ExampleFiles, FilesBuilder,
                                             example_counts, label_coding)

NUM_CLASSES = 37
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refrigerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag")
# builder split -> list file in DIR
LIST_FILES = {"train": "train37.txt", "validation": "val37.txt"}

PREPARE_HELP = (
    "To get it: download SUNRGBD.zip and SUNRGBDtoolbox.zip from "
    "https://rgbd.cs.princeton.edu/ and extract them into a directory DIR; write each "
    "image's 37-class label map (`seglabel` of the toolbox's Metadata/SUNRGBD2Dseg.mat, "
    "0 = void) as an 8-bit PNG under DIR; list the training and the test images (the "
    "toolbox's traintestSUNRGBD/allsplit.mat: 5285 and 5050) in DIR/train37.txt and "
    "DIR/val37.txt, a line per image, its path first and its label's last; then run "
    "`python -m ddfp_jax.data.prepare --dataset sunrgbd --manual_dir DIR --data_dir "
    "TFDS_DIR` (--dataset sunrgbd_zero_based for labels already 0..36 with 255 void).")
EXPECTED_LAYOUT = (
    "DIR/train37.txt and DIR/val37.txt with one line per image, `<image path> ... <label "
    "path>` (image first, its label PNG last, both relative to DIR), e.g. "
    "`SUNRGBD/kv1/NYUdata/NYU0001/image/NYU0001.jpg labels37/NYU0001.png`, and the files "
    "they name")

# builder config -> label PNG -> class map (0..36, 255 void); a value the convention
# lacks is a LabelError naming the file and the other config.
CODINGS = {
    "one_based": label_coding(
        {0: IGNORE_LABEL, **{v: v - 1 for v in range(1, NUM_CLASSES + 1)}},
        "SUN RGB-D label", f"1-based SUN RGB-D label value (0 for void, 1..{NUM_CLASSES} "
        "for the classes)",
        "If the labels hold 0..36 for the classes and 255 for void, prepare --dataset "
        "sunrgbd_zero_based instead of sunrgbd."),
    "zero_based": label_coding(
        {**{c: c for c in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL},
        "SUN RGB-D label", f"0-based SUN RGB-D label value (0..{NUM_CLASSES - 1} for the "
        f"classes, {IGNORE_LABEL} for void)",
        "If the labels hold 0 for void and 1..37 for the classes (the common 37-class "
        "release), prepare --dataset sunrgbd instead of sunrgbd_zero_based."),
}


# (root, problem) -> the one-paragraph LayoutError
_layout_error = functools.partial(layout_error, "SUN RGB-D", expected=EXPECTED_LAYOUT,
                                  how_to_get=PREPARE_HELP)


def _read_list(root: str, list_file: str, lacking: List[str]) -> List[ExampleFiles]:
  """The examples of one list file, sorted by id; files it names that are absent go to
  `lacking`."""
  with open(os.path.join(root, list_file), "r", encoding="utf-8") as f:
    lines = f.read().splitlines()
  examples, line_of, bad = [], {}, []
  for number, line in enumerate(lines, start=1):
    fields = line.split()
    if not fields:
      continue
    where = f"{list_file} line {number}"
    if len(fields) < 2:
      bad.append(f"{where} has one column")
      continue
    try:
      name = splits.sunrgbd_id(fields[0])
    except SplitError:
      bad.append(f"{where} names {fields[0]!r}, not a path inside DIR")
      continue
    if name in line_of:
      bad.append(f"{where} repeats the image of line {line_of[name]}")
      continue
    line_of[name] = number
    image, label = (os.path.join(root, p) for p in (fields[0], fields[-1]))
    absent = [p for p, path in ((fields[0], image), (fields[-1], label))
              if not os.path.isfile(path)]
    lacking.extend(f"{p} ({where})" for p in absent)
    if not absent:
      examples.append(ExampleFiles(name, image, label))
  if bad:
    raise _layout_error(root, f"{len(bad)} lines of {list_file} cannot be read as "
                              f"`<image path> ... <label path>`: {first_few(bad, 3)}")
  if not line_of:
    raise _layout_error(root, f"{list_file} lists no images")
  return sorted(examples)


def find_examples(root: str) -> Dict[str, List[ExampleFiles]]:
  """The image/label files each list file names, sorted by id.

  Raises:
    LayoutError: (one paragraph) if a list file is missing or empty, a line is malformed
      or repeats an image, or a file it names is absent (naming the first few).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise _layout_error(root, "the directory does not exist")
  missing = [f for f in LIST_FILES.values() if not os.path.isfile(os.path.join(root, f))]
  if missing:
    raise _layout_error(root, f"{are_missing(missing)} ({describe_directory(root, 'it')})")
  lacking = []
  examples = {split: _read_list(root, list_file, lacking)
              for split, list_file in LIST_FILES.items()}
  if lacking:
    raise _layout_error(root, f"{len(lacking)} files named by the list files are missing: "
                              f"{first_few(lacking)}")
  return examples


# The label convention is checked while preparing, file by file.
check_layout = example_counts(find_examples)


class DdfpSunrgbd(FilesBuilder):
  """SUN RGB-D, 37 classes, from list files; configs for 1-based and 0-based labels."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="one_based", description="labels 0 = void, 1..37 = "
                              "the classes (the common 37-class release)."),
      tfds.core.BuilderConfig(name="zero_based", description="labels 0..36 = the classes, "
                              "255 = void."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download SUN RGB-D from https://rgbd.cs.princeton.edu/, write each image's 37-class "
      "label map as an 8-bit PNG, and list the images in manual_dir/train37.txt and "
      "manual_dir/val37.txt, one line per image: its path first, its label's path last, "
      "both relative to manual_dir.")
  HOMEPAGE = "https://rgbd.cs.princeton.edu/"
  IMAGE_FORMAT = "jpeg"

  _find_examples = staticmethod(find_examples)

  def _read_label(self, path):
    return CODINGS[self.builder_config.name].read(path)
