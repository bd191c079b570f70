r"""Figures as PNG files, from trained runs.

  python -m ddfp_jax.tools.figures qualitative --config configs/demo.py \
      --runs supervised=DIR1 fixmatch=DIR2 ddfp=DIR3 --num 6 --out results/demo_qualitative.png
  python -m ddfp_jax.tools.figures tsne --config configs/demo.py \
      --runs supervised=DIR1 ddfp=DIR3 --out results/demo_tsne.png
  python -m ddfp_jax.tools.figures density --config configs/demo.py --workdir DIR3 \
      --out results/demo_density.png

`qualitative` (the paper's qualitative figure): validation images in rows; columns the
image, its ground truth and each run's teacher prediction (predicted as validation does,
`tools.predict.Predictor`), in the dataset's colours (`data.palettes`; ignore pixels
white). Every run is read with `--config` and the method its run_info.json names (the
network must be the config's); `-- --config.KEY=VALUE` overrides apply to all.

`tsne` (the paper's Figure 1 idea): the teacher's pixel features of validation pixels,
embedded by t-SNE and coloured by their ground-truth class, one panel per run (e.g.
supervised-only, i.e. before semi-supervised training, beside DDFP), each titled with the
silhouette score of the features by class (`tsne`).

`density`: histograms of the flow's log-density of the student's features on confident
pixels, clean, density-descending perturbed and randomly perturbed (`density`): whether
the perturbation reaches lower density than a random step of the same norm.

Matplotlib figures are written at 100 dpi without a tight box: a t-SNE figure of n runs
is 400n x 400 pixels, a density figure 600 x 400.
"""
import argparse
import sys
from typing import List, Sequence, Tuple

import numpy as np

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)

_HEADER = 14          # pixels of the column titles
_GAP = 2              # pixels between panels


def _grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str],
          scale: int) -> np.ndarray:
  """(H, W, 3) uint8 panels in rows and columns, titled, white gaps."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  h = max(p.shape[0] for row in rows for p in row) * scale
  w = max(p.shape[1] for row in rows for p in row) * scale
  columns = len(titles)
  canvas = Image.new("RGB", (columns * (w + _GAP) - _GAP,
                             _HEADER + len(rows) * (h + _GAP) - _GAP), "white")
  draw = ImageDraw.Draw(canvas)
  for c, title in enumerate(titles):
    draw.text((c * (w + _GAP) + 2, 1), title, fill="black")
  for r, row in enumerate(rows):
    for c, panel in enumerate(row):
      image = Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale),
                                            Image.NEAREST)
      canvas.paste(image, (c * (w + _GAP), _HEADER + r * (h + _GAP)))
  return np.asarray(canvas)


def qualitative(config, runs: Sequence[Tuple[str, str]], num: int, out: str,
                scale: int = 2, model: str = "teacher") -> np.ndarray:
  """Writes the figure to `out` and returns it as (H, W, 3) uint8."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data import palettes, sources  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools import predict  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = trainer.ready_config(config)
  colours = palettes.palette(config.data.name)
  images, labels = sources.first_examples(config, num)
  columns = [[image for image in images], [colours[label] for label in labels]]
  predictor = predict.Predictor(config)
  for _, workdir in runs:
    variables, _, _ = predict.load_variables(config, workdir, "latest", model)
    classes = predictor.predict(variables, images)
    columns.append([colours[c.astype(np.uint8)] for c in classes])
  rows = [list(row) for row in zip(*columns)]
  figure = _grid(rows, ["image", "ground truth"] + [name for name, _ in runs], scale)
  Image.fromarray(figure).save(out)
  return figure


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, out: str) -> np.ndarray:
  """Saves a matplotlib figure at FIGURE_DPI (its size in inches x the dpi, no tight
  box, so the pixel size is known) and returns the PNG as (H, W, C) uint8."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  fig.savefig(out, dpi=FIGURE_DPI)
  _plt().close(fig)
  return np.asarray(Image.open(out))


FIGURE_DPI = 100
PANEL_INCHES = 4.0


def _teacher_features(config):
  """A jitted fn(variables, x (1, H, W, 3)) -> the pixel features v (1, h, w, C)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.models import builders  # pylint: disable=g-import-not-at-top
  model = builders.build_model(config)
  return jax.jit(lambda variables, x: model.apply(
      variables, model.apply(variables, x, False, method="encode"), False,
      method="features"))


def sample_pixels(labels: Sequence[np.ndarray], num_classes: int, per_class: int,
                  seed: int = 0) -> List[np.ndarray]:
  """Up to `per_class` pixels of every class, drawn uniformly from all the label maps'
  pixels of that class: per map the (row, col) array of its chosen pixels. It depends on
  the labels alone, so every run is shown at the same pixels."""
  rs = np.random.RandomState(seed)
  chosen = [np.zeros((0, 2), np.int64) for _ in labels]
  for c in range(num_classes):
    where = [np.argwhere(label == c) for label in labels]
    counts = np.asarray([len(w) for w in where])
    if counts.sum() == 0:
      continue
    picks = rs.choice(counts.sum(), min(per_class, counts.sum()), replace=False)
    owner = np.searchsorted(np.cumsum(counts), picks, side="right")
    offset = picks - np.concatenate([[0], np.cumsum(counts)])[owner]
    for i in np.unique(owner):
      chosen[i] = np.concatenate([chosen[i], where[i][offset[owner == i]]])
  return chosen


def tsne(config, runs: Sequence[Tuple[str, str]], out: str, per_class: int = 150,
         num_images: int = 100, model: str = "teacher", seed: int = 0) -> dict:
  """t-SNE of pixel features coloured by ground-truth class, one panel per run.

  The pixels: up to `per_class` of every class (`sample_pixels`, the same for every run)
  on the feature grid (labels resized nearest, as training resizes them) of the first
  `num_images` validation images, laid out as validation lays them out. Each panel's
  title carries the silhouette score of those features by class (cosine; scikit-learn),
  the number that says how well the classes separate before t-SNE distorts distances.
  Returns {run: {"silhouette": s, "pixels": n}}; writes `out`.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data import palettes, sources  # pylint: disable=g-import-not-at-top
  from ddfp_jax.models.resize import resize_nearest  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools import predict  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = trainer.ready_config(config)
  images, labels = sources.first_examples(config, num_images)
  layout = predict.Predictor(config, single_device=True)
  inputs = [layout.prepare(image)[0] for image in images]
  features_fn = _teacher_features(config)
  grid_labels, chosen = None, None
  panels = []
  for name, workdir in runs:
    variables, _, _ = predict.load_variables(config, workdir, "latest", model)
    feats = [np.asarray(features_fn(variables, x[None]))[0] for x in inputs]
    if chosen is None:   # the grid is the network's: known after the first pass
      grid_labels = [np.asarray(resize_nearest(layout.prepare_label(label)[None],
                                               f.shape[:2]))[0]
                     for label, f in zip(labels, feats)]
      chosen = sample_pixels(grid_labels, config.data.num_classes, per_class, seed)
    x = np.concatenate([f[p[:, 0], p[:, 1]] for f, p in zip(feats, chosen)]).astype(
        np.float32)
    y = np.concatenate([g[p[:, 0], p[:, 1]] for g, p in zip(grid_labels, chosen)])
    score = float(silhouette_score(x, y, metric="cosine")) if len(np.unique(y)) > 1 else 0.0
    embedded = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3),
                    random_state=seed).fit_transform(x)
    panels.append((name, embedded, y, score))
  colours = palettes.palette(config.data.name) / 255.0
  names = palettes.class_names(config.data.name)
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(PANEL_INCHES * len(panels), PANEL_INCHES))
  for ax, (name, embedded, y, score) in zip(axes[0], panels):
    for c in np.unique(y):
      ax.scatter(*embedded[y == c].T, s=3, color=colours[c], label=names[c])
    ax.set_title(f"{name} (silhouette {score:.3f})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][-1].legend(fontsize=6, markerscale=3, loc="best", ncol=2)
  fig.tight_layout()
  _save(fig, out)
  return {name: {"silhouette": score, "pixels": int(len(y))}
          for name, _, y, score in panels}


def density(config, workdir: str, out: str, num_images: int = 100, bins: int = 60) -> dict:
  """Histograms of the log-density of the student's pixel features under the run's flow:
  clean, after the density-descending perturbation and after a random direction of the
  same norm (`ddfp.eps`), on the pixels whose teacher pseudo label is confident, over the
  first `num_images` validation images (`training.visuals.make_maps`).
  Returns the mean log-density of each view; writes `out`."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data import sources  # pylint: disable=g-import-not-at-top
  from ddfp_jax.methods import get_method  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools import predict  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import trainer, visuals  # pylint: disable=g-import-not-at-top
  base = trainer.ready_config(config)
  config = predict._with_runs_method(base, workdir)  # pylint: disable=protected-access
  make_log_density = get_method(config.method).make_log_density
  if make_log_density is None:
    raise predict.PredictError(
        f"the run in {workdir} trained {config.method!r}, which learns no feature density; "
        "the density figure needs a run of a method with one (ddfp).")
  teacher, extra, _ = predict.load_variables(config, workdir, "latest", "teacher")
  student, _, _ = predict.load_variables(config, workdir, "latest", "student")
  maps_fn = visuals.make_maps(config, make_log_density(config))
  layout = predict.Predictor(config, single_device=True)
  images, _ = sources.first_examples(config, num_images)
  values = {view: [] for view in visuals.VIEWS}
  rng = jax.random.key(config.seed)
  for index, image in enumerate(images):
    x, region = layout.prepare(image)
    maps = jax.device_get(maps_fn(teacher, student, extra, x[None],
                                  visuals.region_mask(x.shape[:2], region),
                                  jax.random.fold_in(rng, index)))
    for view in visuals.VIEWS:
      values[view].append(maps[f"{view}_log_density"][maps["confident"]])
  values = {view: np.concatenate(v) for view, v in values.items()}
  finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
  if finite.size == 0:
    raise predict.PredictError(f"no confident pixel in the first {len(images)} validation "
                               f"images at semi.threshold={config.semi.threshold}.")
  edges = np.linspace(*np.percentile(finite, (0.5, 99.5)), bins + 1)
  plt = _plt()
  fig, ax = plt.subplots(figsize=(1.5 * PANEL_INCHES, PANEL_INCHES))
  eps = config.ddfp.eps
  labels = {"clean": "clean", "density_descending": f"density-descending (eps {eps:g})",
            "random": f"random direction (norm {eps:g})"}
  means = {}
  for view in visuals.VIEWS:
    v = values[view][np.isfinite(values[view])]
    means[view] = float(v.mean())
    ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, histtype="step", linewidth=1.4,
            label=f"{labels[view]}: mean {means[view]:.1f}")
  ax.set_xlabel("log p(v) under the flow (student features, confident pixels)")
  ax.set_ylabel("pixels")
  ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, out)
  return {"mean_log_density": means, "pixels": int(len(values["clean"]))}


def _runs(parser, specs: Sequence[str]) -> List[Tuple[str, str]]:
  runs = []
  for spec in specs:
    name, sep, workdir = spec.partition("=")
    if not sep:
      parser.error(f"--runs {spec!r}: give NAME=WORKDIR, e.g. ddfp=/tmp/runs/ddfp")
    runs.append((name, workdir))
  return runs


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m ddfp_jax.tools.figures",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="figure", required=True)
  q = commands.add_parser("qualitative", help="images, ground truth, each run's prediction")
  q.add_argument("--runs", nargs="+", required=True, metavar="NAME=WORKDIR")
  q.add_argument("--num", type=int, default=6)
  q.add_argument("--scale", type=int, default=2)
  q.add_argument("--model", choices=("teacher", "student"), default="teacher")
  t = commands.add_parser("tsne", help="t-SNE of pixel features by class, one panel per run")
  t.add_argument("--runs", nargs="+", required=True, metavar="NAME=WORKDIR")
  t.add_argument("--per-class", type=int, default=150)
  t.add_argument("--num-images", type=int, default=100)
  t.add_argument("--model", choices=("teacher", "student"), default="teacher")
  d = commands.add_parser("density", help="log-density histograms: clean vs perturbed")
  d.add_argument("--workdir", required=True, help="a run of a method with a density")
  d.add_argument("--num-images", type=int, default=100)
  d.add_argument("--bins", type=int, default=60)
  for command in (q, t, d):
    command.add_argument("--config", required=True)
    command.add_argument("--out", required=True, help="the PNG to write")
    command.add_argument("overrides", nargs="*", help="--config.KEY=VALUE (after --)")
  args = parser.parse_args(argv)
  from ddfp_jax.config import loading  # pylint: disable=g-import-not-at-top
  from ddfp_jax.config.check import ConfigError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools.predict import PredictError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  try:
    config = loading.load(args.config, args.overrides)
    if args.figure == "qualitative":
      qualitative(config, _runs(parser, args.runs), args.num, args.out, args.scale,
                  args.model)
    elif args.figure == "tsne":
      for name, result in tsne(config, _runs(parser, args.runs), args.out, args.per_class,
                               args.num_images, args.model).items():
        print(f"{name}: silhouette {result['silhouette']:.3f} over {result['pixels']} "
              "pixels")
    else:
      result = density(config, args.workdir, args.out, args.num_images, args.bins)
      print(f"{result['pixels']} confident pixels; mean log-density "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["mean_log_density"].items()))
  except (PredictError, ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(args.out) as written:
    print(f"Wrote {args.out} ({written.size[0]} x {written.size[1]}).")


if __name__ == "__main__":
  main(sys.argv[1:])
