"""Small fake Cityscapes and Pascal VOC downloads, written in the real on-disk layouts.

For the tests, the input-pipeline benchmark, and for trying the whole path (prepare,
split lists, training, evaluation) on a machine without the real files. Images are
smooth colour fields with mild noise, so PNG/JPEG sizes and decode costs are closer to
photographs than pure noise would be; labels are random class maps with every value
the real files may hold.
"""
import os
import pathlib
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ddfp_jax.data import voc

# Cityscapes raw label ids that labelIds PNGs hold: 0..33.
CITYSCAPES_RAW_IDS = np.arange(34, dtype=np.uint8)
# Pascal VOC label values: the 21 classes and the 255 boundary.
VOC_VALUES = np.array(list(range(voc.NUM_CLASSES)) + [255], np.uint8)


def save_png(path, array: np.ndarray, palette: Optional[np.ndarray] = None) -> None:
  """A uint8 array as PNG: RGB, grayscale ("L") or, given a palette, palette ("P")."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  if palette is not None:
    image.putpalette(np.asarray(palette).ravel().tolist())   # "L" -> "P": values = indices
  image.save(path)


def smooth_image(rng: np.random.RandomState, shape: Tuple[int, int]) -> np.ndarray:
  """(H, W, 3) uint8: a random colour gradient plus noise of +-8."""
  h, w = shape
  y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
  x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
  a, b, c = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
  image = a + (b - a) * y + (c - a) * x * 0.5 + rng.uniform(-8, 8, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def _label_map(rng: np.random.RandomState, values: np.ndarray,
               shape: Tuple[int, int]) -> np.ndarray:
  """Random values on 8x8 blocks (like regions, not noise), every value present once."""
  h, w = shape
  blocks = rng.choice(values, (-(-h // 8), -(-w // 8)))
  label = np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w].astype(np.uint8)
  n = min(len(values), label.size)
  label.ravel()[:n] = values[:n]
  return label


def write_cityscapes(root, cities: Mapping[str, Mapping[str, int]],
                     shape: Tuple[int, int] = (6, 10), seed: int = 0
                     ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """leftImg8bit + gtFine (labelIds, plus colour PNGs a real download also holds).

  Args:
    root: the directory to write (the manual dir).
    cities: folder ("train", "val") -> city -> number of frames.
    shape: (H, W) of every image.
    seed: seed of the content.

  Returns:
    canonical id (`<city>/<city>_<seq>_<frame>`) -> (image, raw label ids).
  """
  root = pathlib.Path(root)
  rng = np.random.RandomState(seed)
  files = {}
  for folder, frames_of in cities.items():
    for city, frames in frames_of.items():
      for frame in range(frames):
        stem = f"{city}_{frame:06d}_000019"
        image = smooth_image(rng, shape)
        raw = _label_map(rng, CITYSCAPES_RAW_IDS, shape)
        save_png(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png", image)
        save_png(root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png", raw)
        save_png(root / "gtFine" / folder / city / f"{stem}_gtFine_color.png", image)
        files[f"{city}/{stem}"] = (image, raw)
  return files


def write_voc(root, train: Sequence[str], val: Sequence[str], aug_only: Sequence[str] = (),
              shape: Tuple[int, int] = (7, 9), seed: int = 1):
  """VOCdevkit/VOC2012 (JPEGs, palette labels, image sets) and SegmentationClassAug in root.

  `train` ids go to train.txt, `val` ids to val.txt; `aug_only` ids have only SBD labels.
  The SBD labels differ from the fine ones, so a reader shows which folder it read.

  Returns:
    (JPEG bytes by id, fine labels by id, SBD labels by id).
  """
  root = pathlib.Path(root)
  base = root / voc.VOC_SUBDIR
  rng = np.random.RandomState(seed)
  palette = voc.color_palette()
  images, fine, aug = {}, {}, {}
  for example_id in list(train) + list(val) + list(aug_only):
    path = base / "JPEGImages" / f"{example_id}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(rng, shape)).save(path, quality=90)
    images[example_id] = path.read_bytes()
    if example_id not in aug_only:
      fine[example_id] = _label_map(rng, VOC_VALUES, shape)
      save_png(base / "SegmentationClass" / f"{example_id}.png", fine[example_id],
               palette=palette)
    aug[example_id] = _label_map(rng, VOC_VALUES, shape)
    save_png(root / voc.AUG_DIRNAME / f"{example_id}.png", aug[example_id])
  sets = base / "ImageSets" / "Segmentation"
  os.makedirs(sets, exist_ok=True)
  (sets / "train.txt").write_text("\n".join(train) + "\n")
  (sets / "val.txt").write_text("\n".join(val) + "\n")
  return images, fine, aug
