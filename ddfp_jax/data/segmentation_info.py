"""What the real-dataset builders share: the TFDS feature layout, the example files,
label decoding and the base builder.

Every builder finds (image, label) file pairs under the user's extracted download, names
each by its canonical id (`ddfp_jax.data.splits`), writes them in sorted-id order and
records that order in its metadata. A dataset module supplies only what is its own: where
the files are (`find_examples`) and how its label PNGs encode the classes (`LabelCoding`).
"""
import functools
import os
import sys
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ddfp_jax.data.errors import (LabelError, LayoutError, are_missing, describe_directory,
                                  first_few, layout_error)

IGNORE_LABEL = 255


class ExampleFiles(NamedTuple):
  name: str          # canonical id
  image: str         # path of the image file
  label: str         # path of the label PNG


def segmentation_info(builder: tfds.core.GeneratorBasedBuilder, image_format: str,
                      homepage: str, description: str) -> tfds.core.DatasetInfo:
  """Image (original bytes, not re-encoded), uint8 label map (PNG), and the example id.

  Examples are written in sorted-id order and the ids are recorded in the metadata
  (`names[split][i]` is example i), so split lists can select examples by index.
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                       encoding_format=image_format),
          # Class ids (255 = ignore); PNG keeps full-size label maps a few KB each.
          "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                       encoding_format="png"),
          "name": tfds.features.Text(),
      }),
      supervised_keys=("image", "label"),
      homepage=homepage,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
  )


def record_names(info: tfds.core.DatasetInfo, examples) -> None:
  """Stores each split's example ids, in the order they are written, in the metadata."""
  info.metadata["names"] = {split: [e.name for e in files] for split, files in examples.items()}


def generate_examples(files, read_label):
  """Yields (id, features) for examples with `.image`, `.label`, `.name`; `read_label`
  turns a label file into an (H, W) uint8 class map. Image and label must agree in size."""
  for example in files:
    label = read_label(example.label)
    with Image.open(example.image) as image:
      size = image.size
    if size != (label.shape[1], label.shape[0]):
      raise LayoutError(f"{example.image} is {size[0]}x{size[1]} but its label "
                        f"{example.label} is {label.shape[1]}x{label.shape[0]}.")
    yield example.name, {"image": example.image, "label": label[..., None],
                         "name": example.name}


class LabelCoding(NamedTuple):
  """How the label PNGs of a dataset hold its classes.

  A value that a valid file of the dataset cannot hold raises an error instead of being
  mapped to ignore: it only comes from a wrong file (colour-rendered, resized with
  interpolation, another dataset or label convention), and ignoring it would silently drop
  the supervision of every affected pixel.
  """
  stored: np.ndarray     # (256,) uint8: the class id stored for each file value, 255 ignore
  valid: np.ndarray      # (256,) bool: the values a valid file may hold
  what: str              # the files, for messages ("Cityscapes labelIds")
  values: str            # the valid values in words ("Cityscapes label id (0..33)")
  remedy: str            # what to do about a bad file

  def read(self, path: str) -> np.ndarray:
    """The stored class map (H, W) uint8 of the label PNG at `path`.

    Raises:
      LayoutError: if the file is not a single-channel image of integer label values.
      LabelError: naming the file and the values, if it holds values `valid` excludes.
    """
    with Image.open(path) as image:
      mode = image.mode
      # For palette ("P") images this is the palette index of every pixel, not a colour.
      values = np.asarray(image)
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.integer):
      raise LayoutError(f"{path} is a {mode!r} image of shape {values.shape}; {self.what} "
                        "files must be single-channel PNGs (grayscale or palette) of label "
                        f"values. {self.remedy}")
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= 256 or not self.valid[v]]
    if bad:
      raise LabelError(f"{path} contains values {first_few(bad, 8)} that are no "
                       f"{self.values}. {self.remedy}")
    return self.stored[values]


def label_coding(stored_of: Mapping[int, int], what: str, values: str, remedy: str
                 ) -> LabelCoding:
  """The `LabelCoding` of files holding exactly the values of `stored_of`, which maps
  each file value to the class id to store (255 = ignore)."""
  stored = np.full(256, IGNORE_LABEL, np.uint8)
  valid = np.zeros(256, bool)
  for value, class_id in stored_of.items():
    stored[value], valid[value] = class_id, True
  return LabelCoding(stored, valid, what, values, remedy)


def find_paired_files(root: str, folders: Mapping[str, Tuple[str, str]], image_suffix: str,
                      label_suffix: str, subfolder: Optional[str],
                      layout_error: Callable[[str, str], LayoutError]
                      ) -> Dict[str, List[ExampleFiles]]:
  """The image/label pairs of each builder split: a label has its image's file name.

  Images and labels are paired by name (never by listing order, which depends on the
  file system) and returned sorted by id.

  Args:
    root: the manual dir.
    folders: builder split -> (image folder, label folder), relative to `root`.
    image_suffix, label_suffix: the file name endings; an image `<stem><image_suffix>`
      has the label `<stem><label_suffix>`.
    subfolder: what the one level of subfolders the images sit in is called ("city"),
      giving ids `<subfolder>/<stem>`; None when they sit in the folder itself (id
      `<stem>`).
    layout_error: (root, problem) -> the dataset's `LayoutError`.

  Raises:
    LayoutError: (one paragraph) if a folder is missing, a split has no images, or an
      image has no label file (naming the first few of them).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise layout_error(root, "the directory does not exist")
  needed = list(dict.fromkeys(f for pair in folders.values() for f in pair))
  missing = [f for f in needed if not os.path.isdir(os.path.join(root, f))]
  if missing:
    raise layout_error(root, f"{are_missing(missing)} ({describe_directory(root, 'it')})")
  examples, lacking = {}, []
  for split, (image_folder, label_folder) in folders.items():
    found, lacked = [], len(lacking)
    for sub, file_name in _image_files(os.path.join(root, image_folder), image_suffix,
                                       subfolder is not None):
      stem = file_name[:-len(image_suffix)]
      label_rel = os.path.join(label_folder, sub, stem + label_suffix)
      if not os.path.isfile(os.path.join(root, label_rel)):
        lacking.append(f"{label_rel} (for {os.path.join(image_folder, sub, file_name)})")
        continue
      found.append(ExampleFiles(f"{sub}/{stem}" if sub else stem,
                                os.path.join(root, image_folder, sub, file_name),
                                os.path.join(root, label_rel)))
    if not found and len(lacking) == lacked:
      pattern = f"<{subfolder}>/*{image_suffix}" if subfolder else f"*{image_suffix}"
      raise layout_error(root, f"{image_folder} holds no {pattern} images")
    examples[split] = sorted(found)
  if lacking:
    raise layout_error(root, f"{len(lacking)} images have no label file; missing: "
                             f"{first_few(lacking)}")
  return examples


def _image_files(folder: str, suffix: str, nested: bool) -> List[Tuple[str, str]]:
  """(subfolder or "", file name) of the files ending in `suffix`, sorted."""
  if not nested:
    return [("", f) for f in sorted(os.listdir(folder)) if f.endswith(suffix)]
  return [(sub, f) for sub in sorted(os.listdir(folder))
          if os.path.isdir(os.path.join(folder, sub))
          for f in sorted(os.listdir(os.path.join(folder, sub))) if f.endswith(suffix)]


def example_counts(find_examples: Callable[..., Dict[str, List[ExampleFiles]]]
                   ) -> Callable[..., Dict[str, int]]:
  """The `check_layout(root, ...)` of a dataset module from its `find_examples`.

  `check_layout` checks the extracted files under `root` and returns the number of
  examples per split; like `find_examples`, it raises a one-paragraph `LayoutError` naming
  `root`, the expected layout, what is missing and how to prepare the data.
  """
  def check_layout(root: str, *args) -> Dict[str, int]:
    return {split: len(files) for split, files in find_examples(root, *args).items()}
  return check_layout


def paired_files_layout(dataset: str, folders: Mapping[str, Tuple[str, str]],
                        image_suffix: str, label_suffix: str, subfolder: Optional[str],
                        expected: str, how_to_get: str):
  """`(find_examples, check_layout)` of a dataset whose labels sit in folders of their own
  beside the images' (`find_paired_files`); `dataset`, `expected` and `how_to_get` make
  its one-paragraph `LayoutError`s (`errors.layout_error`)."""
  error = functools.partial(layout_error, dataset, expected=expected, how_to_get=how_to_get)
  find_examples = functools.partial(find_paired_files, folders=folders,
                                    image_suffix=image_suffix, label_suffix=label_suffix,
                                    subfolder=subfolder, layout_error=error)
  return find_examples, example_counts(find_examples)


class FilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of the file pairs under the manual dir; a dataset's builder subclasses it.

  Subclasses set MANUAL_DOWNLOAD_INSTRUCTIONS, HOMEPAGE, IMAGE_FORMAT (of the stored image
  bytes, which are not re-encoded) and define `_find_examples(root)` -> {split:
  [ExampleFiles]} and `_read_label(path)` -> (H, W) uint8. The description is the
  docstring of the subclass's module.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = ""
  IMAGE_FORMAT = "png"

  def _find_examples(self, root: str) -> Dict[str, List[ExampleFiles]]:
    raise NotImplementedError

  def _read_label(self, path: str) -> np.ndarray:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return segmentation_info(self, self.IMAGE_FORMAT, self.HOMEPAGE,
                             sys.modules[type(self).__module__].__doc__)

  def _split_generators(self, dl_manager):
    examples = self._find_examples(os.fspath(dl_manager.manual_dir))
    record_names(self.info, examples)
    return {split: self._generate_examples(files) for split, files in examples.items()}

  def _generate_examples(self, files: List[ExampleFiles]):
    return generate_examples(files, self._read_label)
