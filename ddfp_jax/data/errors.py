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


def describe_directory(path: str, subject: str) -> str:
  """What `path` holds, for a layout message: "<subject> holds a, b, ...", "<subject> is
  empty" or "<subject> cannot be listed"."""
  try:
    entries = sorted(os.listdir(path))
  except OSError:
    return f"{subject} cannot be listed"
  return f"{subject} holds {first_few(entries)}" if entries else f"{subject} is empty"
