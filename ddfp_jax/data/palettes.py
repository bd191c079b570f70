"""How the classes of each dataset are shown: colours and names.

Colours of the class ids, per dataset, as (256, 3) uint8 tables (index = class id):

- pascal / pascal_blended: the VOC devkit's palette (bit-interleaved colour map), the one
  VOC's own label PNGs carry; 255 (ignore) is its cream boundary colour.
- cityscapes: the official colour of each train id (`cityscapesscripts`); 255 black.
- demo: background black, the ten digits in ten well-separated hues; 255 white.

Every table has 256 entries, so it can be a PNG palette directly: a palette ("P") PNG of
a class map stores the ids themselves and shows the colours. `class_names` gives the
names figures write next to the colours.
"""
import colorsys

import numpy as np

from ddfp_jax.data import demo


def voc() -> np.ndarray:
  """The VOC devkit's colour map: bit k of the id goes to bit 7 - k // 3 of R, G or B."""
  table = np.zeros((256, 3), np.uint8)
  for index in range(256):
    value, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((value >> 0) & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    table[index] = (r, g, b)
  return table


def cityscapes() -> np.ndarray:
  from cityscapesscripts.helpers import labels  # pylint: disable=g-import-not-at-top
  table = np.zeros((256, 3), np.uint8)
  for label in labels.labels:
    if 0 <= label.trainId < 255:
      table[label.trainId] = label.color
  return table


def digits() -> np.ndarray:
  table = np.zeros((256, 3), np.uint8)
  for digit in range(demo.NUM_CLASSES - 1):
    rgb = colorsys.hsv_to_rgb(digit / (demo.NUM_CLASSES - 1), 0.85, 1.0)
    table[1 + digit] = np.round(np.asarray(rgb) * 255)
  table[255] = 255
  return table


_PALETTES = {"demo": digits, "cityscapes": cityscapes, "pascal": voc,
             "pascal_blended": voc}


def palette(dataset: str) -> np.ndarray:
  """The (256, 3) uint8 colour table of `dataset` (a `config.data.name`)."""
  if dataset not in _PALETTES:
    raise ValueError(f"no palette for dataset {dataset!r}; known: {sorted(_PALETTES)}")
  return _PALETTES[dataset]()


VOC_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
             "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
             "potted plant", "sheep", "sofa", "train", "tv/monitor")


def _cityscapes_names():
  from cityscapesscripts.helpers import labels  # pylint: disable=g-import-not-at-top
  names = {label.trainId: label.name for label in labels.labels if 0 <= label.trainId < 255}
  return tuple(names[i] for i in range(len(names)))


_NAMES = {"demo": lambda: ("background",) + tuple(str(d) for d in range(demo.NUM_CLASSES - 1)),
          "cityscapes": _cityscapes_names, "pascal": lambda: VOC_NAMES,
          "pascal_blended": lambda: VOC_NAMES}


def class_names(dataset: str) -> tuple:
  """The name of each class id of `dataset`, in id order."""
  if dataset not in _NAMES:
    raise ValueError(f"no class names for dataset {dataset!r}; known: {sorted(_NAMES)}")
  return _NAMES[dataset]()
