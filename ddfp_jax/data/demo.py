"""Digit scenes: a small semi-supervised segmentation set that needs no download.

Each scene is a square RGB image with a textured background (a colour gradient plus
low-frequency noise) and 2-4 handwritten digits from scikit-learn's bundled set (1797
8x8 images), each smoothly upscaled, coloured and placed at a random position with little
overlap. The label map has 0 for background and 1 + digit for digit pixels: 11 classes.

The set is a pure function of (split, scene index, image size, seed): every scene draws
from its own NumPy `RandomState`, so scenes do not depend on how many others were made.
Train scenes (`labeled`, `unlabeled`) use the first `TRAIN_DIGIT_SAMPLES` digit samples
and `validation` scenes the rest, so validation measures generalisation to unseen
handwriting rather than to unseen placements of memorised digits.

Two domains, as USSS's setting needs (one model over datasets with different label
spaces and looks): "day" (the above, 11 classes) and "night": dark, grainier backgrounds,
brighter strokes, and a coarser label space of 6 classes, 0 background and 1 + digit // 2
for the pairs {0, 1}, {2, 3}, ..., {8, 9}. A night scene is drawn from its own random
stream, so the two domains never share a scene. `data.demo_domain` picks one.

The scenes are served through a TFDS builder, `DigitScenes`, like the real datasets, so
the training pipeline has a single path: `load_demo_split(config, split)`.
"""
import dataclasses
import functools
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

SPLITS = ("labeled", "unlabeled", "validation")
NUM_CLASSES = 11      # of the "day" domain


class Domain(NamedTuple):
  """How a domain's scenes look and what their labels say."""
  num_classes: int
  digits_per_class: int        # label = 1 + digit // digits_per_class
  background: Tuple[float, float]   # range of the gradient's end colours
  grain: float                 # std of the per-pixel noise
  stroke: Tuple[float, float]  # range of the stroke colour candidates
  code: int                    # separates the domains' random streams


DOMAINS = {
    "day": Domain(NUM_CLASSES, 1, (30.0, 225.0), 4.0, (0.0, 255.0), 0),
    "night": Domain(6, 2, (5.0, 70.0), 12.0, (110.0, 255.0), 10),
}


def domain_spec(domain: str) -> Domain:
  if domain not in DOMAINS:
    raise ValueError(f"Unknown digit-scenes domain {domain!r}; expected one of "
                     f"{tuple(DOMAINS)}.")
  return DOMAINS[domain]


def class_names(domain: str = "day") -> Tuple[str, ...]:
  """The name of each class of `domain`, in id order."""
  per = domain_spec(domain).digits_per_class
  groups = ["-".join(str(d) for d in range(lo, lo + per)) for lo in range(0, 10, per)]
  return ("background",) + tuple(groups)
# Digit samples [0, TRAIN_DIGIT_SAMPLES) feed the train scenes, the rest the validation
# scenes (397 samples, roughly 40 per digit).
TRAIN_DIGIT_SAMPLES = 1400

_SPLIT_CODES = {"labeled": 0, "unlabeled": 1, "validation": 2}
# Digit box sizes at the reference image size; scaled with the image size so that small
# test scenes keep the same composition.
_REFERENCE_SIZE = 96
# Large digits with generously labelled strokes: with thin 20-36 px digits about 95 % of
# the pixels were background, and a from-scratch CPU-sized model learnt little beyond
# "background" within the demo's step budget.
_DIGIT_BOX = (32, 52)
_DIGITS_PER_SCENE = (3, 5)
# An upscaled stroke intensity above this (on 0..1) is labelled as the digit. Below it the
# digit is still blended into the image, which gives soft, anti-aliased edges.
_LABEL_THRESHOLD = 0.3
_MAX_OVERLAP = 0.15
_PLACEMENT_TRIES = 30
_COLOUR_CANDIDATES = 12


class Scene(NamedTuple):
  image: np.ndarray           # (S, S, 3) uint8
  label: np.ndarray           # (S, S) uint8, 0 background, 1 + digit
  digit_samples: np.ndarray   # indices into `load_digits()` of the digits drawn


@functools.lru_cache(maxsize=1)
def _digits() -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as (images float32 in [0, 1] (N, 8, 8), targets int64 (N,))."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def digit_sample_pool(split: str) -> np.ndarray:
  """Indices of the digit samples that scenes of `split` may use."""
  _check_split(split)
  num = len(_digits()[1])
  if split == "validation":
    return np.arange(TRAIN_DIGIT_SAMPLES, num)
  return np.arange(TRAIN_DIGIT_SAMPLES)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown digit-scenes split {split!r}; expected one of {SPLITS}.")


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of bilinear weights, half-pixel centres, edges clamped."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(m, (rows, lo), 1.0 - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def _upscale(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Bilinear resize of an (h, w) or (h, w, c) array; separable, as two matmuls."""
  y = np.tensordot(_bilinear_matrix(x.shape[0], out_h), x, axes=(1, 0))
  y = np.tensordot(_bilinear_matrix(x.shape[1], out_w), np.moveaxis(y, 1, 0), axes=(1, 0))
  return np.moveaxis(y, 0, 1)


def _background(rng: np.random.RandomState, size: int, style: Domain) -> np.ndarray:
  """A smooth colour gradient plus low-frequency colour noise and fine grain, float."""
  c0, c1 = rng.uniform(*style.background, size=(2, 3))
  angle = rng.uniform(0.0, 2.0 * np.pi)
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
  t = xx * np.cos(angle) + yy * np.sin(angle)
  t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
  image = c0 + (c1 - c0) * t[..., None]
  blobs = _upscale(rng.normal(size=(4, 4, 3)), size, size)
  image += blobs * rng.uniform(10.0, 30.0)
  image += rng.normal(scale=style.grain, size=(size, size, 3))
  return image


def _overlap_ok(box: Tuple[int, int, int], boxes) -> bool:
  """Whether a square box (y, x, s) overlaps each placed box by < _MAX_OVERLAP of area."""
  y, x, s = box
  for by, bx, bs in boxes:
    dy = min(y + s, by + bs) - max(y, by)
    dx = min(x + s, bx + bs) - max(x, bx)
    if dy > 0 and dx > 0 and dy * dx > _MAX_OVERLAP * min(s, bs) ** 2:
      return False
  return True


def generate_scene(split: str, index: int, *, image_size: int, seed: int,
                   domain: str = "day") -> Scene:
  """Scene `index` of `split` in `domain`: a pure function of its arguments."""
  _check_split(split)
  style = domain_spec(domain)
  digit_images, targets = _digits()
  pool = digit_sample_pool(split)
  rng = np.random.RandomState([seed, _SPLIT_CODES[split] + style.code, index])

  image = _background(rng, image_size, style)
  label = np.zeros((image_size, image_size), np.uint8)
  lo, hi = (max(4, round(b * image_size / _REFERENCE_SIZE)) for b in _DIGIT_BOX)
  hi = min(hi, image_size)
  num_digits = rng.randint(_DIGITS_PER_SCENE[0], _DIGITS_PER_SCENE[1] + 1)
  samples = rng.choice(pool, size=num_digits, replace=False)
  boxes = []
  for sample in samples:
    box_size = rng.randint(lo, hi + 1)
    for _ in range(_PLACEMENT_TRIES):
      box = (rng.randint(0, image_size - box_size + 1),
             rng.randint(0, image_size - box_size + 1), box_size)
      if _overlap_ok(box, boxes):
        break
    boxes.append(box)
    y, x, s = box
    # A zero border lets the stroke fade out inside the box instead of ending at its edge.
    padded = np.pad(digit_images[sample], 1)
    alpha = np.clip(_upscale(padded, s, s), 0.0, 1.0)[..., None]
    region = image[y:y + s, x:x + s]
    # The candidate colour farthest from the background under the strokes keeps every
    # digit visible.
    candidates = rng.uniform(*style.stroke, size=(_COLOUR_CANDIDATES, 3))
    under = (region * alpha).sum((0, 1)) / max(alpha.sum(), 1e-6)
    distance = np.linalg.norm(candidates - under, axis=-1)
    colour = candidates[np.argmax(distance)]
    image[y:y + s, x:x + s] = region * (1.0 - alpha) + colour * alpha
    label[y:y + s, x:x + s][alpha[..., 0] > _LABEL_THRESHOLD] = (
        1 + targets[sample] // style.digits_per_class)
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return Scene(image, label, samples.astype(np.int64))


def generate_split(split: str, num: int, *, image_size: int, seed: int,
                   domain: str = "day") -> Iterator[Tuple[int, Scene]]:
  """Yields (index, scene) for the first `num` scenes of `split`."""
  for index in range(num):
    yield index, generate_scene(split, index, image_size=image_size, seed=seed,
                                domain=domain)


@dataclasses.dataclass(eq=False)
class DigitScenesConfig(tfds.core.BuilderConfig):
  """Sizes and seed of a digit-scenes variant; its name is derived from them."""
  image_size: int = 96
  num_labeled: int = 40
  num_unlabeled: int = 1000
  num_validation: int = 200
  seed: int = 0
  domain: str = "day"

  @property
  def split_sizes(self) -> Dict[str, int]:
    return {"labeled": self.num_labeled, "unlabeled": self.num_unlabeled,
            "validation": self.num_validation}


def make_builder_config(image_size: int, num_labeled: int, num_unlabeled: int,
                        num_validation: int, seed: int,
                        domain: str = "day") -> DigitScenesConfig:
  """The builder config for these sizes: distinct sizes never share prepared files."""
  domain_spec(domain)
  name = f"s{image_size}_l{num_labeled}_u{num_unlabeled}_v{num_validation}_seed{seed}"
  if domain != "day":             # the day domain keeps the names it was first built with
    name += f"_{domain}"
  predefined = DigitScenes.builder_configs.get(name)
  if predefined is not None:
    # TFDS refuses a new config object named like a predefined one.
    return predefined
  return DigitScenesConfig(name=name, image_size=image_size, num_labeled=num_labeled,
                           num_unlabeled=num_unlabeled, num_validation=num_validation,
                           seed=seed, domain=domain, description="Custom sizes.")


class DigitScenes(tfds.core.GeneratorBasedBuilder):
  """Scenes of handwritten digits on textured backgrounds; 11-class segmentation."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Larger digits (32-52 px at 96 px), 3-5 per scene, label threshold 0.3.",
  }
  BUILDER_CONFIGS = [
      DigitScenesConfig(name="s96_l40_u1000_v200_seed0",
                        description="The demo config's sizes."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        # Keep scene order = index order, so reading a split back is reproducible
        # without a sort and matches `generate_split`.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated locally.
    return {split: self._generate_examples(split, num)
            for split, num in self.builder_config.split_sizes.items()}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    for index, scene in generate_split(split, num, image_size=cfg.image_size, seed=cfg.seed,
                                       domain=cfg.domain):
      yield index, {"image": scene.image, "label": scene.label, "index": index}


def builder_config_for(config) -> DigitScenesConfig:
  """The builder config for `config.data`'s demo sizes and seed."""
  data = config.data
  return make_builder_config(
      int(data.demo_image_size), int(data.demo_labeled), int(data.demo_unlabeled),
      int(data.demo_validation), int(data.demo_seed), str(data.demo_domain))


def demo_builder(config) -> DigitScenes:
  """The `DigitScenes` builder for `config.data` (sizes, seed and data_dir)."""
  data_dir: Optional[str] = config.data.data_dir
  return DigitScenes(config=builder_config_for(config), data_dir=data_dir)


def load_demo_split(config, split: str) -> tf.data.Dataset:
  """`split` of the demo set as a dataset of {image, label, index}, prepared if needed.

  Args:
    config: the experiment config; reads `config.data.demo_*` and `config.data.data_dir`
      (None: TFDS's default directory).
    split: "labeled", "unlabeled" or "validation".

  Returns:
    A `tf.data.Dataset` in index order of dicts: image uint8 (S, S, 3), label uint8
    (S, S), index int64.
  """
  _check_split(split)
  builder = demo_builder(config)
  builder.download_and_prepare()
  return builder.as_dataset(split=split, shuffle_files=False)
