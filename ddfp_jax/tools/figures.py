r"""Figures as PNG files, from trained runs.

  python -m ddfp_jax.tools.figures qualitative --config configs/demo.py \
      --runs supervised=DIR1 fixmatch=DIR2 ddfp=DIR3 --num 6 --out results/demo_qualitative.png

`qualitative` (the paper's qualitative figure): validation images in rows; columns the
image, its ground truth and each run's teacher prediction (predicted as validation does,
`tools.predict.Predictor`), in the dataset's colours (`data.palettes`; ignore pixels
white). Every run is read with `--config` and the method its run_info.json names (the
network must be the config's); `-- --config.KEY=VALUE` overrides apply to all.
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
  from ddfp_jax.data import palettes  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools import predict  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = trainer.ready_config(config)
  colours = palettes.palette(config.data.name)
  images, labels = _validation_examples(config, num)
  columns = [[image for image in images], [colours[label] for label in labels]]
  for _, workdir in runs:
    variables, _, _ = predict.load_variables(config, workdir, "latest", model)
    classes = predict.Predictor(config, variables).predict(images)
    columns.append([colours[c.astype(np.uint8)] for c in classes])
  rows = [list(row) for row in zip(*columns)]
  figure = _grid(rows, ["image", "ground truth"] + [name for name, _ in runs], scale)
  Image.fromarray(figure).save(out)
  return figure


def _validation_examples(config, num: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """The first `num` validation images and labels (the demo's from memory, a real
  dataset's decoded from its prepared files)."""
  from ddfp_jax.data import sources  # pylint: disable=g-import-not-at-top
  if config.data.name == "demo":
    images, labels = sources.demo_arrays(config, "validation")
    return list(images[:num]), list(labels[:num])
  source = sources.eval_source(config)
  pairs = [source.load(i) for i in range(min(num, source.size))]
  return [np.asarray(i) for i, _ in pairs], [np.asarray(l) for _, l in pairs]


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m ddfp_jax.tools.figures",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="figure", required=True)
  q = commands.add_parser("qualitative", help="images, ground truth, each run's prediction")
  q.add_argument("--config", required=True)
  q.add_argument("--runs", nargs="+", required=True, metavar="NAME=WORKDIR")
  q.add_argument("--num", type=int, default=6)
  q.add_argument("--scale", type=int, default=2)
  q.add_argument("--model", choices=("teacher", "student"), default="teacher")
  q.add_argument("--out", required=True)
  q.add_argument("overrides", nargs="*", help="--config.KEY=VALUE (after --)")
  args = parser.parse_args(argv)
  from ddfp_jax.config import loading  # pylint: disable=g-import-not-at-top
  from ddfp_jax.config.check import ConfigError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.tools.predict import PredictError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  runs = []
  for spec in args.runs:
    name, sep, workdir = spec.partition("=")
    if not sep:
      parser.error(f"--runs {spec!r}: give NAME=WORKDIR, e.g. ddfp=/tmp/runs/ddfp")
    runs.append((name, workdir))
  try:
    figure = qualitative(loading.load(args.config, args.overrides), runs, args.num,
                         args.out, args.scale, args.model)
  except (PredictError, ConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"Wrote {args.out} ({figure.shape[1]} x {figure.shape[0]}).")


if __name__ == "__main__":
  main(sys.argv[1:])
