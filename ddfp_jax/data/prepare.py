r"""Writes the TFDS files of a real dataset from the user's extracted download.

  python -m ddfp_jax.data.prepare --dataset cityscapes --manual_dir ~/data/cityscapes \
      --data_dir ~/tensorflow_datasets
  python -m ddfp_jax.data.prepare --dataset pascal_blended --manual_dir ~/data/voc

The layout of --manual_dir is checked first; if something is missing the command prints
one paragraph saying what and where, and exits with status 1. Preparing an already
prepared dataset does nothing.
"""
import sys

from absl import app, flags

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)
from ddfp_jax.data import real_datasets
from ddfp_jax.data.errors import DatasetError

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(real_datasets.DATASETS), "Dataset to prepare.")
flags.DEFINE_string("manual_dir", None, "Directory holding the extracted download.")
flags.DEFINE_string("data_dir", None, "TFDS data directory to write to (default: TFDS's, "
                    "usually ~/tensorflow_datasets); pass the same as config.data.data_dir.")
flags.mark_flags_as_required(["dataset", "manual_dir"])


def run(dataset: str, manual_dir: str, data_dir=None, out=None) -> None:
  """Checks, prepares and reports `dataset`; raises `DatasetError` on bad input files."""
  out = out or sys.stdout
  counts = real_datasets.check_layout(dataset, manual_dir)
  found = ", ".join(f"{split} {n}" for split, n in counts.items())
  print(f"{dataset}: found {found} examples in {manual_dir}.", file=out, flush=True)
  if real_datasets.is_prepared(dataset, data_dir):
    print(f"{dataset}: already prepared.", file=out, flush=True)
  else:
    print(f"{dataset}: writing the TFDS files...", file=out, flush=True)
  builder = real_datasets.prepare(dataset, manual_dir, data_dir)
  for split, info in builder.info.splits.items():
    print(f"{dataset}: {split}: {info.num_examples} examples written.", file=out, flush=True)
  print(f"{dataset}: ready in {builder.data_dir}", file=out, flush=True)
  if dataset == "pascal":
    print("note: the standard Pascal classic split lists draw their unlabeled images from "
          "the 10582-image set; prepare --dataset pascal_blended as well to train with them.",
          file=out, flush=True)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(FLAGS.dataset, FLAGS.manual_dir, FLAGS.data_dir)
  except DatasetError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
