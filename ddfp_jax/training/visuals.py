"""Pictures of a run for TensorBoard, written at every evaluation.

The first `train.num_images` validation images, each panel one TensorBoard image tag
("images/<panel>", the images in a row under it):

- image, ground_truth: the input and its labels in the dataset's colours (ignore white);
- student, teacher: each network's prediction, made exactly as validation makes it
  (`tools.predict.Predictor`: the config's protocol, whole image, centre crop or windows);
- confident_pseudo_label: the teacher's prediction where its confidence passes
  `semi.threshold` (what the unlabeled loss would learn), grey elsewhere;
- for methods with a feature density (`Method.make_log_density`, DDFP's flow):
  log_density, the log-density of the teacher's pixel features v; and perturbation_norm,
  ||v' - v|| per pixel of the student's features after the density-descending
  perturbation (`ddfp.eps`) at `semi.site`, on the confident pixels (zero elsewhere).
  At the paper's site it equals eps wherever a pixel is perturbed; at the release's it
  shows how the classifier block carries the perturbation of its input.

Density maps are computed on the network's input for the whole image (for a centre crop,
the crop) at the feature grid (stride 4) and shown at the image's size, coloured with
viridis over the range of all the images of the panel (2nd to 98th percentile for the
log-density), so the images of one evaluation compare with each other.

Everything runs on the first local device (`jax.jit`, unreplicated state): process 0 of a
multi-process run draws the pictures alone, the others do not wait for it.
"""
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.data import palettes, sources
from ddfp_jax.methods import feature_perturbation, get_method
from ddfp_jax.models import builders
from ddfp_jax.models.resize import resize_bilinear, resize_nearest

NOT_CONFIDENT = np.asarray([96, 96, 96], np.uint8)   # grey: no pseudo label there
PANELS = ("image", "ground_truth", "student", "teacher", "confident_pseudo_label")
DENSITY_PANELS = ("log_density", "perturbation_norm")


def colour_map(values: Sequence[np.ndarray], low: float, high: float) -> List[np.ndarray]:
  """Float maps -> (H, W, 3) uint8 in viridis, `low`..`high` mapped to its ends."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  cmap = colormaps["viridis"]
  scale = max(high - low, 1e-12)
  return [np.round(255 * cmap(np.clip((v - low) / scale, 0.0, 1.0))[..., :3]).astype(np.uint8)
          for v in values]


def stack(panels: Sequence[np.ndarray]) -> np.ndarray:
  """(H_i, W_i, 3) panels -> (N, H, W, 3), each padded white to the largest."""
  h = max(p.shape[0] for p in panels)
  w = max(p.shape[1] for p in panels)
  out = np.full((len(panels), h, w, 3), 255, np.uint8)
  for i, p in enumerate(panels):
    out[i, :p.shape[0], :p.shape[1]] = p
  return out


def _upsample(grid_map: np.ndarray, shape) -> np.ndarray:
  """A feature-grid map shown at `shape` (nearest, each cell a block of pixels)."""
  rows = np.minimum(np.arange(shape[0]) * grid_map.shape[0] // shape[0], grid_map.shape[0] - 1)
  cols = np.minimum(np.arange(shape[1]) * grid_map.shape[1] // shape[1], grid_map.shape[1] - 1)
  return grid_map[rows][:, cols]


def on_first_device(tree):
  """Each array's copy on the first local device (no transfer: the shard that is there)."""
  device = jax.local_devices()[0]

  def first(leaf):
    if isinstance(leaf, jax.Array):
      for shard in leaf.addressable_shards:
        if shard.device == device:
          return shard.data
      return jax.device_put(leaf, device)
    return leaf
  return jax.tree.map(first, tree)


# The student's feature views whose log-density `make_maps` returns.
VIEWS = ("clean", "density_descending", "random")


def make_maps(config, log_density: Optional[Callable]) -> Callable:
  """A jitted fn(teacher, student, extra, x (1, H, W, 3), valid (1, H, W) bool, rng) ->

  {"confidence", "pseudo"}: the teacher's max softmax probability and argmax at the
  input's size; and, with a density, on the feature grid (h, w): "confident" (valid
  pixels whose teacher confidence passes `semi.threshold`: the perturbed ones),
  "log_density" (of the teacher's features), "perturbation_norm" (||v' - v|| of the
  student's features under the density-descending perturbation, 0 where not confident)
  and "<view>_log_density" of the student's features for each of `VIEWS` (the random
  view: a Gaussian direction of the same norm).
  """
  model = builders.build_model(config)
  tau = config.semi.threshold

  def maps(teacher, student, extra, x, valid, rng):
    v = model.apply(teacher, model.apply(teacher, x, False, method="encode"), False,
                    method="features")
    logits = model.apply(teacher, v, method="classify")
    probs = jax.nn.softmax(resize_bilinear(logits.astype(jnp.float32), x.shape[1:3]), -1)
    out = {"confidence": probs.max(-1)[0], "pseudo": probs.argmax(-1)[0]}
    if log_density is None:
      return out
    log_p = lambda f: log_density(extra, f.astype(jnp.float32))
    grid_valid = resize_nearest(valid.astype(jnp.int32), v.shape[1:3]) > 0
    confident = grid_valid & (jax.nn.softmax(logits.astype(jnp.float32), -1).max(-1) > tau)
    views, _ = feature_perturbation.inference_views(
        config, model, student, x, log_p, confident, VIEWS[1:], rng)
    shift = (views["density_descending"] - views["clean"]).astype(jnp.float32)
    out["confident"] = confident[0]
    out["log_density"] = log_p(v)[0]
    out["perturbation_norm"] = jnp.where(confident, jnp.linalg.norm(shift, axis=-1), 0.0)[0]
    for name in VIEWS:
      out[f"{name}_log_density"] = log_p(views[name])[0]
    return out

  return jax.jit(maps)


def region_mask(shape, region) -> np.ndarray:
  """(1, H, W) bool: True on the (y1, y2, x1, x2) part of an input of `shape` (H, W)."""
  y1, y2, x1, x2 = region
  mask = np.zeros((1,) + tuple(shape), bool)
  mask[0, y1:y2, x1:x2] = True
  return mask


class TrainingImages:
  """The pictures of `config.train.num_images` validation images; call with a state."""

  def __init__(self, config):
    from ddfp_jax.tools.predict import Predictor  # pylint: disable=g-import-not-at-top
    self.config = config
    self.images, self.labels = sources.first_examples(config, config.train.num_images)
    self.colours = palettes.palette(config.data.name)
    self.predictor = Predictor(config, single_device=True)
    make_log_density = get_method(config.method).make_log_density
    self.has_density = make_log_density is not None
    self._maps = make_maps(config, make_log_density(config) if self.has_density else None)
    self._rng = jax.random.key(config.seed)

  @property
  def panels(self) -> tuple:
    return PANELS + (DENSITY_PANELS if self.has_density else ())

  def __call__(self, state) -> Dict[str, np.ndarray]:
    """{"images/<panel>": (N, H, W, 3) uint8} of a TrainState (replicated or not)."""
    state = on_first_device(state)
    student = {"params": state.params, "batch_stats": state.batch_stats}
    teacher = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
    colour = lambda ids: self.colours[np.asarray(ids).astype(np.uint8)]
    shown = {"image": list(self.images),
             "ground_truth": [colour(label) for label in self.labels],
             "student": [colour(c) for c in self.predictor.predict(student, self.images)],
             "teacher": [colour(c) for c in self.predictor.predict(teacher, self.images)]}
    pseudo, log_density, norms = [], [], []
    for index, image in enumerate(self.images):
      x, region = self.predictor.prepare(image)
      y1, y2, x1, x2 = region
      maps = jax.device_get(self._maps(teacher, student, state.extra, x[None],
                                       region_mask(x.shape[:2], region),
                                       jax.random.fold_in(self._rng, index)))
      keep = maps["confidence"][y1:y2, x1:x2] > self.config.semi.threshold
      pseudo.append(np.where(keep[..., None], colour(maps["pseudo"][y1:y2, x1:x2]),
                             NOT_CONFIDENT))
      if self.has_density:
        full = x.shape[:2]
        log_density.append(_upsample(maps["log_density"], full)[y1:y2, x1:x2])
        norms.append(_upsample(maps["perturbation_norm"], full)[y1:y2, x1:x2])
    shown["confident_pseudo_label"] = pseudo
    if self.has_density:
      values = np.concatenate([m.ravel() for m in log_density])
      values = values[np.isfinite(values)]
      low, high = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
      shown["log_density"] = colour_map(log_density, low, high)
      shown["perturbation_norm"] = colour_map(norms, 0.0, max(m.max() for m in norms))
    return {f"images/{name}": stack(shown[name]) for name in self.panels}
