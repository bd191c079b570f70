"""Errors of the input data: each carries a complete, one-paragraph message for the user.

They live in a module of their own (not next to the pipeline) so that the dataset
builders, the split lists and the pipeline can all raise them without importing each
other.
"""
import os


class DatasetError(Exception):
  """A dataset that is unknown, unsupported, misconfigured or not prepared."""


class SplitError(DatasetError, ValueError):
  """A labeled/unlabeled split list that cannot be read or does not fit the dataset."""


class LayoutError(DatasetError):
  """Extracted dataset files that are missing, misplaced or not what the builder expects."""


class LabelError(DatasetError):
  """A label map holding a value that is neither a class id nor the ignore label."""


def first_few(names, limit: int = 5) -> str:
  """`names` as "a, b, c, ... (N in all)", for messages about many files."""
  names = list(names)
  shown = ", ".join(str(n) for n in names[:limit])
  if len(names) > limit:
    shown += f", ... ({len(names)} in all)"
  return shown


def layout_error(dataset: str, root: str, problem: str, expected: str, how_to_get: str
                 ) -> LayoutError:
  """The one-paragraph error of a dataset builder that cannot use the files under `root`:
  what is wrong, the layout it expects (with the manual dir called DIR) and how to get
  the files."""
  return LayoutError(f"{dataset} was not found in {root}: {problem}. Expected {expected}, "
                     f"with DIR = {root}. {how_to_get}")


def are_missing(names) -> str:
  """"a is missing" or "a, b are missing"."""
  names = list(names)
  return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} missing"


def describe_directory(path: str, subject: str) -> str:
  """What `path` holds, for a layout message: "<subject> holds a, b, ...", "<subject> is
  empty" or "<subject> cannot be listed"."""
  try:
    entries = sorted(os.listdir(path))
  except OSError:
    return f"{subject} cannot be listed"
  return f"{subject} holds {first_few(entries)}" if entries else f"{subject} is empty"
