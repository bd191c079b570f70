"""Reading weight files: PyTorch `.pth` / `.pt` as NumPy, and the converted `.npz`.

PyTorch is imported only to read a `.pth`, and only then (so that everything else runs
without it). `torch.load` runs on the CPU with `weights_only=True`: tensors, containers and,
since release checkpoints hold a NumPy float (`best_miou`), NumPy scalars and dtypes;
anything else is refused rather than executed unless `trust_pickle`.

A training checkpoint is opened at `key` (default: the first of `model_state`,
`state_dict`, `model` that it has) for its state dict; `read_torch_checkpoint` reads all of
it.

A converted `.npz` holds the Flax variables flat (`params/backbone/layer1_0/conv1/kernel`,
...) and loads without PyTorch; its writer `save_npz` stands beside `load_npz` so that the
two agree on the layout.
"""
import pickle
from typing import Any, Dict, Mapping, Optional

from flax import traverse_util
import numpy as np

from ddfp_jax.interop.names import COLLECTIONS

PyTree = Any
# Checkpoint entries that hold a model's state dict (U2PL / DDFP save "model_state").
_CHECKPOINT_KEYS = ("model_state", "state_dict", "model")


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (the CPU build is enough). Alternatively convert it "
        f"once where PyTorch is installed: python -m ddfp_jax.interop.cli --input {path} "
        f"--output OUT.npz, and use the .npz.") from e
  return torch


def _numpy_scalar_globals():
  """What unpickling a NumPy scalar needs, under NumPy 2's and NumPy 1's module names
  (files written with NumPy 1 name `numpy.core.multiarray.scalar`)."""
  try:
    from numpy._core.multiarray import scalar  # pylint: disable=g-import-not-at-top
  except ImportError:  # NumPy 1
    from numpy.core.multiarray import scalar  # pylint: disable=g-import-not-at-top
  return [scalar, (scalar, "numpy.core.multiarray.scalar"),
          (scalar, "numpy._core.multiarray.scalar"), np.dtype,
          *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)}]


def _torch_load(torch, path: str, trust_pickle: bool):
  """torch.load on the CPU; tensors, containers and NumPy scalars only unless trusted."""
  try:
    if trust_pickle:
      return torch.load(path, map_location="cpu", weights_only=False)
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # PyTorch < 2.5: tensors only
      return torch.load(path, map_location="cpu", weights_only=True)
    with safe_globals(_numpy_scalar_globals()):
      return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(f"{path} pickles objects other than tensors and NumPy scalars, which "
                     f"torch.load(weights_only=True) refuses. If the file is trusted, pass "
                     f"trust_pickle=True (--trust_pickle).") from e


def read_torch_file(path: str, key: Optional[str] = None,
                    trust_pickle: bool = False) -> Dict[str, np.ndarray]:
  """Reads a PyTorch state dict (or the state dict inside a training checkpoint) as NumPy.

  `torch.load` runs with `weights_only=True` (NumPy scalars allowed) unless
  `trust_pickle`: a checkpoint that pickles other objects is then refused rather than
  executed.
  """
  torch = _import_torch(path)
  obj = _torch_load(torch, path, trust_pickle)
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  if key is not None:
    if key not in obj:
      raise KeyError(f"{path} has no entry {key!r}; it has {sorted(map(str, obj))}")
    obj = obj[key]
  elif not all(torch.is_tensor(v) for v in obj.values()):
    found = [k for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)]
    if not found:
      raise ValueError(f"{path} is neither a state dict nor a checkpoint with one of "
                       f"{_CHECKPOINT_KEYS}; its entries are {sorted(map(str, obj))[:10]}. "
                       f"Name the entry with key= (--key).")
    obj = obj[found[0]]
  return {name: value.detach().cpu().float().numpy() for name, value in obj.items()
          if torch.is_tensor(value)}


def read_torch_checkpoint(path: str, trust_pickle: bool = False) -> Dict[str, Any]:
  """A whole PyTorch checkpoint: state dicts (entries whose values are all tensors) as
  NumPy float32 dicts, tensors as NumPy float32 arrays (so a plain state dict comes back
  whole), other entries (epoch, metrics, optimiser states) as loaded."""
  torch = _import_torch(path)
  obj = _torch_load(torch, path, trust_pickle)
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
  as_numpy = lambda t: t.detach().cpu().float().numpy()
  out = {}
  for name, value in obj.items():
    if isinstance(value, Mapping) and value and all(torch.is_tensor(v) for v in value.values()):
      value = {k: as_numpy(v) for k, v in value.items()}
    elif torch.is_tensor(value):
      value = as_numpy(value)
    out[name] = value
  return out


def save_npz(path: str, variables: PyTree) -> None:
  """Writes variables flat, one array per leaf, keyed like `params/backbone/bn1/scale`."""
  flat = traverse_util.flatten_dict({c: variables[c] for c in COLLECTIONS if c in variables},
                                    sep="/")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_npz(path: str) -> PyTree:
  with np.load(path) as data:
    return traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
