"""One checked way to put arrays from a file or another run into a variable tree."""
from typing import Any, Callable, Optional, Tuple

from flax import traverse_util
import flax
import jax.numpy as jnp

from ddfp_jax.interop.names import StateDictMismatch

PyTree = Any
Path = Tuple[str, ...]


def merge_checked(target: PyTree, new: PyTree, source: str,
                  wanted: Optional[Callable[[Path], bool]] = None,
                  allow_unexpected: bool = False,
                  sides: Tuple[str, str] = ("file", "model")) -> PyTree:
  """`target` with its leaves replaced by `new`'s, in `target`'s dtypes.

  Every leaf of `target` that `wanted(path)` accepts (default: all) must be in `new` with
  the same shape; a leaf of `new` that `target` lacks is an error unless
  `allow_unexpected`. All that differs is reported at once (`StateDictMismatch`, shapes
  labelled by `sides`), before anything is replaced.
  """
  flat_target = traverse_util.flatten_dict(flax.core.unfreeze(target))
  flat_new = traverse_util.flatten_dict(flax.core.unfreeze(new or {}))
  wanted = wanted or (lambda path: True)
  name = "/".join
  keys = [k for k in flat_target if wanted(k)]
  missing = [name(k) for k in keys if k not in flat_new]
  unexpected = [] if allow_unexpected else [name(k) for k in flat_new if k not in flat_target]
  # In the order of `new` (the file's), as a reader of the report goes through it.
  wrong_shape = [f"{name(k)} ({sides[0]} {tuple(v.shape)}, {sides[1]} "
                 f"{tuple(flat_target[k].shape)})"
                 for k, v in flat_new.items() if k in flat_target and wanted(k)
                 and tuple(v.shape) != tuple(flat_target[k].shape)]
  if missing or unexpected or wrong_shape:
    raise StateDictMismatch(source, missing, unexpected, wrong_shape)
  for k in keys:
    flat_target[k] = jnp.asarray(flat_new[k], dtype=flat_target[k].dtype)
  return traverse_util.unflatten_dict(flat_target)
