"""The real datasets by their config name (`config.data.name`): builders and preparation.

| name                 | builder                   | classes | train | validation |
|----------------------|---------------------------|---------|-------|------------|
| `cityscapes`         | `ddfp_cityscapes`         | 19      | 2975  | 500        |
| `pascal`             | `ddfp_voc/classic`        | 21      | 1464  | 1449       |
| `pascal_blended`     | `ddfp_voc/blended`        | 21      | 10582 | 1449       |
| `camvid`             | `ddfp_camvid`             | 11      | 367   | 101 (test 233) |
| `idd`                | `ddfp_idd`                | 26      | 6993  | 981        |
| `sunrgbd`            | `ddfp_sunrgbd/one_based`  | 37      | 5285  | 5050       |
| `sunrgbd_zero_based` | `ddfp_sunrgbd/zero_based` | 37      | 5285  | 5050       |

CamVid, IDD and SUN RGB-D are the datasets of USSS (universal semi-supervised
segmentation); the two SUN RGB-D names differ only in the label convention of the files
they read (`ddfp_jax.data.sunrgbd`). The counts are those of the standard downloads and
lists; a builder writes whatever the download holds.

Prepared files are written as ArrayRecord, which reads any example by its index: the
input pipeline draws examples by id, step by step, so it needs random access rather than
one pass in file order (`as_dataset` cannot read ArrayRecord; use `encoded_source`).
`example_names` maps those indices to the canonical ids of `ddfp_jax.data.splits`.
"""
import os
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import tensorflow_datasets as tfds

from ddfp_jax.data import camvid
from ddfp_jax.data import cityscapes
from ddfp_jax.data import idd
from ddfp_jax.data import sunrgbd
from ddfp_jax.data import voc
from ddfp_jax.data.errors import DatasetError, LayoutError

FILE_FORMAT = "array_record"
# The splits every real dataset has; CamVid also has "test".
SPLITS = ("train", "validation")


class RealDataset(NamedTuple):
  builder_cls: type
  builder_config: Optional[str]
  num_classes: int
  class_names: Tuple[str, ...]   # by class id
  check_layout: Callable[[str], Dict[str, int]]
  expected_layout: str     # the extracted files, with the manual dir called DIR
  how_to_get: str          # where to download them and how to prepare them


DATASETS: Dict[str, RealDataset] = {
    "cityscapes": RealDataset(cityscapes.DdfpCityscapes, None, cityscapes.NUM_CLASSES,
                              cityscapes.CLASS_NAMES, cityscapes.check_layout,
                              cityscapes.EXPECTED_LAYOUT, cityscapes.PREPARE_HELP),
    "pascal": RealDataset(voc.DdfpVoc, "classic", voc.NUM_CLASSES, voc.CLASS_NAMES,
                          lambda root: voc.check_layout(root, "classic"),
                          voc.EXPECTED_LAYOUT, voc.PREPARE_HELP),
    "pascal_blended": RealDataset(voc.DdfpVoc, "blended", voc.NUM_CLASSES, voc.CLASS_NAMES,
                                  lambda root: voc.check_layout(root, "blended"),
                                  voc.EXPECTED_LAYOUT, voc.PREPARE_HELP),
    "camvid": RealDataset(camvid.DdfpCamvid, None, camvid.NUM_CLASSES, camvid.CLASS_NAMES,
                          camvid.check_layout, camvid.EXPECTED_LAYOUT, camvid.PREPARE_HELP),
    "idd": RealDataset(idd.DdfpIdd, None, idd.NUM_CLASSES, idd.CLASS_NAMES, idd.check_layout,
                       idd.EXPECTED_LAYOUT, idd.PREPARE_HELP),
    "sunrgbd": RealDataset(sunrgbd.DdfpSunrgbd, "one_based", sunrgbd.NUM_CLASSES,
                           sunrgbd.CLASS_NAMES, sunrgbd.check_layout,
                           sunrgbd.EXPECTED_LAYOUT, sunrgbd.PREPARE_HELP),
    "sunrgbd_zero_based": RealDataset(sunrgbd.DdfpSunrgbd, "zero_based", sunrgbd.NUM_CLASSES,
                                      sunrgbd.CLASS_NAMES, sunrgbd.check_layout,
                                      sunrgbd.EXPECTED_LAYOUT, sunrgbd.PREPARE_HELP),
}


def _lookup(dataset: str) -> RealDataset:
  if dataset not in DATASETS:
    raise DatasetError(f"Unknown dataset {dataset!r}; the real datasets are "
                       f"{tuple(DATASETS)}.")
  return DATASETS[dataset]


def make_builder(dataset: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `dataset` in `data_dir` (None: TFDS's default directory)."""
  entry = _lookup(dataset)
  kwargs = {"config": entry.builder_config} if entry.builder_config else {}
  return entry.builder_cls(data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)


def check_layout(dataset: str, manual_dir: str) -> Dict[str, int]:
  """Checks the extracted files of `dataset`; returns the examples per split.

  Raises:
    LayoutError: one paragraph naming the directory, the expected layout, what is missing
      and how to prepare the data.
  """
  if not manual_dir:
    raise LayoutError(f"No directory of extracted {dataset} files was given: pass "
                      "--manual_dir (config.data.manual_dir).")
  return _lookup(dataset).check_layout(os.path.expanduser(manual_dir))


def is_prepared(dataset: str, data_dir: Optional[str] = None) -> bool:
  """Whether `dataset` has been prepared in `data_dir`."""
  return make_builder(dataset, data_dir).is_prepared()


def prepare(dataset: str, manual_dir: str, data_dir: Optional[str] = None
            ) -> tfds.core.DatasetBuilder:
  """Checks the layout, then writes the TFDS files of `dataset` (if not there yet).

  Raises:
    LayoutError: if the files under `manual_dir` are missing or malformed.
  """
  manual_dir = os.path.expanduser(manual_dir) if manual_dir else manual_dir
  check_layout(dataset, manual_dir)
  builder = make_builder(dataset, data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def example_names(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[str]:
  """Canonical ids of `split` of a prepared builder, in index order."""
  names = builder.info.metadata.get("names", {}).get(split) if builder.info.metadata else None
  if names is None:
    raise DatasetError(f"{builder.name} in {builder.data_dir} records no example names for "
                       f"split {split!r}; prepare it again with `python -m "
                       "ddfp_jax.data.prepare`.")
  return names


def encoded_source(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[dict]:
  """Random-access examples of `split` with image and label still PNG/JPEG encoded.

  `source[i]` is {"image": bytes, "label": bytes, "name": bytes}: decoding is left to the
  caller (e.g. `tf.io.decode_image` inside a parallel `tf.data` map), so that reading a
  record by index costs only the file read.
  """
  skip = tfds.decode.SkipDecoding()
  return builder.as_data_source(split=split, decoders={"image": skip, "label": skip})
