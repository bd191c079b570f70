r"""Segment images with a trained model: label, colour and overlay PNGs per image.

  python -m ddfp_jax.tools.predict --config configs/demo.py --workdir DIR --images 'photos/*.png' \
      --out predictions/ [--checkpoint latest|best|STEP] [--model teacher|student]

`--images` takes files, folders (every image in them) and globs. The model is the run's
teacher (default) or student from a checkpoint of `--workdir` (a run of this config, or a
converted release model: `python -m ddfp_jax.interop.cli`). Images are predicted exactly as
validation predicts them (`evaluate.make_predict_step`, the config's protocol: whole image,
centre crop or sliding windows), batched over the local devices, one compile per image
size. For the whole-image protocol, `--bucket N` pads each image (with the mean colour, as
validation pads a batch of mixed sizes) up to a multiple of N pixels per side, so that a
folder of assorted sizes compiles once per bucket rather than once per size; the padding
shifts the predictions near the borders a little, so the default, 1, pads nothing and
gives exactly validation's predictions.

For each image NAME: NAME_label.png (class ids, 8-bit grey; 255 nowhere: every pixel gets
a class), NAME_color.png (a palette PNG of the same ids in the dataset's colours,
`data.palettes`) and NAME_overlay.png (the colours blended over the image).
"""
import glob
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

from absl import app, flags
import numpy as np

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.5
_IMAGES_IN_MEMORY = 256


class PredictError(ValueError):
  """Input that cannot be predicted; the message says what and how to fix it."""


def find_images(patterns: Sequence[str]) -> List[str]:
  """Files, folders (their images, sorted) and globs, in the order given, each once."""
  found, missing = [], []
  for pattern in patterns:
    if os.path.isdir(pattern):
      paths = sorted(os.path.join(pattern, n) for n in os.listdir(pattern)
                     if n.lower().endswith(IMAGE_SUFFIXES))
    elif os.path.isfile(pattern):
      paths = [pattern]
    else:
      paths = sorted(glob.glob(pattern))
    if not paths:
      missing.append(pattern)
    found.extend(paths)
  if missing:
    raise PredictError(f"no image found for {', '.join(repr(m) for m in missing)}. Pass "
                       "image files, folders that hold images "
                       f"({', '.join(IMAGE_SUFFIXES)}) or quoted globs.")
  return list(dict.fromkeys(found))


def read_image(path: str, header_only: bool = False) -> np.ndarray:
  """An RGB image as (H, W, 3) uint8; with `header_only`, only checks that it is one
  (Pillow reads the header alone), so bad files stop a run before the model loads."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      mode = image.mode
      if mode != "RGB":
        raise PredictError(
            f"{path} is a {mode!r} image with {len(image.getbands())} channel(s); the "
            "model reads 3-channel RGB. Convert it first (e.g. with Pillow: "
            "Image.open(path).convert('RGB').save(new_path)).")
      return None if header_only else np.asarray(image, np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise PredictError(f"{path} cannot be read as an image ({e}). Pass image files "
                       f"({', '.join(IMAGE_SUFFIXES)}).") from None


def bucket_shape(height: int, width: int, bucket: int) -> Tuple[int, int]:
  up = lambda n: -(-n // bucket) * bucket
  return up(height), up(width)


def _with_runs_method(config, workdir: str):
  """`config` with the method the run in `workdir` trained (its run_info.json): the
  method decides the state's extra part (DDFP's flow), which a restore must match; the
  network, the only part that predicts, is the config's either way."""
  from ddfp_jax.methods import METHODS  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(workdir, "run_info.json")) as f:
      method = json.load(f).get("method")
  except (OSError, ValueError):
    return config
  if method not in METHODS or method == config.method:
    return config
  config = config.copy_and_resolve_references()
  config.method = method
  return config


def load_variables(config, workdir: str, checkpoint: str = "latest",
                   model: str = "teacher"):
  """({"params", "batch_stats"}, the method's extra state, step) of a run's checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.state import create_train_state  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(os.path.join(ckpt_dir, "latest")):
    raise PredictError(f"no checkpoints in {workdir}: pass the --workdir of a training run "
                       "(or of a converted release model).")
  target = create_train_state(_with_runs_method(config, workdir), jax.random.key(config.seed))
  with Checkpointer(ckpt_dir) as checkpointer:
    try:
      if checkpoint == "best":
        state = checkpointer.restore_best(target)
      else:
        step = None if checkpoint == "latest" else int(checkpoint)
        state = checkpointer.restore(target, step)
    except FileNotFoundError as e:
      raise PredictError(f"{e}; the checkpoints there: latest steps "
                         f"{checkpointer.all_steps()}, best step "
                         f"{checkpointer.best_step()}.") from None
  if model == "teacher":
    params, stats = state.teacher_params, state.teacher_batch_stats
  else:
    params, stats = state.params, state.batch_stats
  return {"params": params, "batch_stats": stats}, state.extra, int(state.step)


class Predictor:
  """Class maps for images of any size, the way validation predicts them.

  Built once per config; `predict(variables, images)` takes the model's variables at each
  call, so one Predictor (and its compiled steps, one per image shape) serves any number
  of checkpoints. By default batched over the local devices (`jax.pmap`); with
  `single_device` it runs on the first local device alone (`jax.jit`), which one process
  of a multi-process run may do without the others (the training images).
  """

  def __init__(self, config, bucket: int = 1, single_device: bool = False):
    import jax  # pylint: disable=g-import-not-at-top
    from ddfp_jax.models import builders  # pylint: disable=g-import-not-at-top
    from ddfp_jax.training import evaluate  # pylint: disable=g-import-not-at-top
    self.config, self.bucket = config, max(1, int(bucket))
    self.devices = 1 if single_device else jax.local_device_count()
    self.per_device = int(config.data.eval_per_device)
    kwargs = evaluate.predict_kwargs_from_config(config)
    self.sliding = "window" in kwargs
    step = evaluate.make_predict_step(builders.build_model(config), **kwargs)
    classes = lambda v, x: step(v, None, x)["model"]
    if single_device:
      jitted = jax.jit(classes)
      self._step = lambda v, x: jitted(v, x[0])[None]
    else:
      self._step = jax.pmap(classes, in_axes=(None, 0))

  def _layout(self, height: int, width: int):
    """((top, bottom), (left, right)) padding, then the (y, x, h, w) window kept."""
    if self.config.data.eval_protocol == "center_crop":
      # As validation: pad evenly to at least the crop, take the centre.
      crop = int(self.config.data.eval_crop)
      ph, pw = max(crop - height, 0), max(crop - width, 0)
      pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
      return pads, ((height + ph - crop) // 2, (width + pw - crop) // 2, crop, crop)
    bh, bw = (height, width) if self.sliding else bucket_shape(height, width, self.bucket)
    return ((0, bh - height), (0, bw - width)), (0, 0, bh, bw)

  def _arrange(self, array: np.ndarray, fill) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    pads, (y, x, h, w) = self._layout(*array.shape[:2])
    padded = np.pad(array, pads + ((0, 0),) * (array.ndim - 2), constant_values=fill)
    # Where the array's own pixels lie in the result.
    top, left = pads[0][0] - y, pads[1][0] - x
    region = (max(top, 0), min(top + array.shape[0], h), max(left, 0),
              min(left + array.shape[1], w))
    return padded[y:y + h, x:x + w], region

  def prepare(self, image: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """The normalised network input of a (H, W, 3) uint8 image (padding 0: the mean
    colour, as validation pads) and (y1, y2, x1, x2), where the image's pixels lie in it."""
    data = self.config.data
    x = (image.astype(np.float32) - np.asarray(data.mean, np.float32)) / np.asarray(
        data.std, np.float32)
    return self._arrange(x, 0.0)

  def prepare_label(self, label: np.ndarray) -> np.ndarray:
    """A (H, W) label laid out as `prepare` lays out its image (padding ignored)."""
    return self._arrange(label, self.config.data.ignore_label)[0]

  def predict(self, variables, images: Sequence[np.ndarray]) -> List[np.ndarray]:
    """(H', W') int class maps of {"params", "batch_stats"} `variables`, one per image in
    order (H' x W' the image's size; for a centre crop the crop's part that holds the
    image)."""
    prepared = [self.prepare(image) for image in images]
    groups: Dict[Tuple[int, int], List[int]] = {}
    for index, (x, _) in enumerate(prepared):
      groups.setdefault(x.shape[:2], []).append(index)
    per_call = self.devices * (1 if self.sliding else self.per_device)
    results: Dict[int, np.ndarray] = {}
    for shape, indices in groups.items():
      for start in range(0, len(indices), per_call):
        chunk = indices[start:start + per_call]
        batch = np.stack([prepared[i][0] for i in chunk]
                         + [prepared[chunk[0]][0]] * (per_call - len(chunk)))
        out = np.asarray(self._step(variables, batch.reshape(
            (self.devices, -1) + batch.shape[1:])))
        out = out.reshape((-1,) + shape)
        for i, pred in zip(chunk, out):
          y1, y2, x1, x2 = prepared[i][1]
          results[i] = pred[y1:y2, x1:x2]
    return [results[i] for i in range(len(images))]


def write_outputs(out_dir: str, name: str, image: np.ndarray, classes: np.ndarray,
                  palette: np.ndarray) -> Dict[str, str]:
  """NAME_label.png, NAME_color.png, NAME_overlay.png in `out_dir`; returns the paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ids = classes.astype(np.uint8)
  paths = {kind: os.path.join(out_dir, f"{name}_{kind}.png")
           for kind in ("label", "color", "overlay")}
  Image.fromarray(ids, mode="L").save(paths["label"])
  coloured = Image.fromarray(ids, mode="P")
  coloured.putpalette(palette.reshape(-1).tolist())
  coloured.save(paths["color"])
  h, w = ids.shape
  under = image[:h, :w].astype(np.float32)
  blend = (1 - OVERLAY_ALPHA) * under + OVERLAY_ALPHA * palette[ids].astype(np.float32)
  Image.fromarray(np.round(blend).astype(np.uint8)).save(paths["overlay"])
  return paths


FLAGS = flags.FLAGS


def _define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's directory (its checkpoints/).")
  flags.DEFINE_multi_string("images", None, "Image files, folders or (quoted) globs.")
  flags.DEFINE_string("out", None, "Directory for the PNGs (created).")
  flags.DEFINE_string("checkpoint", "latest", "latest, best, or a step number.")
  flags.DEFINE_enum("model", "teacher", ["teacher", "student"], "Which network predicts.")
  flags.DEFINE_integer("bucket", 1, "Whole-image protocol: pad each side up to a "
                       "multiple of this (one compile per padded shape); 1: no padding.")
  flags.mark_flags_as_required(["config", "workdir", "images", "out"])


def run(config, workdir: str, patterns: Sequence[str], out_dir: str,
        checkpoint: str = "latest", model: str = "teacher", bucket: int = 1,
        progress: bool = True) -> List[Dict[str, str]]:
  """Predicts every image of `patterns` into `out_dir`; returns each image's paths."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from ddfp_jax.config.check import check_config  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data import palettes  # pylint: disable=g-import-not-at-top
  check_config(config)
  if checkpoint not in ("latest", "best") and not checkpoint.isdigit():
    raise PredictError(f"--checkpoint {checkpoint!r} is not 'latest', 'best' or a step "
                       "number.")
  paths = find_images(patterns)
  for path in paths:
    read_image(path, header_only=True)
  variables, _, step = load_variables(config, workdir, checkpoint, model)
  os.makedirs(out_dir, exist_ok=True)
  colours = palettes.palette(config.data.name)
  names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(names)) != len(names):   # the same file name in two folders
    names = [f"{i:05d}_{n}" for i, n in enumerate(names)]
  predictor = Predictor(config, bucket)
  written = []
  with tqdm(total=len(paths), disable=not progress, desc=f"{model} step {step}") as bar:
    # A chunk of images in memory at a time, whatever the folder's size.
    for start in range(0, len(paths), _IMAGES_IN_MEMORY):
      chunk = slice(start, start + _IMAGES_IN_MEMORY)
      images = [read_image(p) for p in paths[chunk]]
      predicted = predictor.predict(variables, images)
      for name, image, classes in zip(names[chunk], images, predicted):
        written.append(write_outputs(out_dir, name, image, classes, colours))
        bar.update()
  return written


def main(argv):
  del argv
  from ddfp_jax.config.check import ConfigError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    written = run(FLAGS.config, FLAGS.workdir, FLAGS.images, FLAGS.out, FLAGS.checkpoint,
                  FLAGS.model, FLAGS.bucket)
  except (PredictError, ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"Wrote {3 * len(written)} PNGs for {len(written)} image(s) to {FLAGS.out}.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
