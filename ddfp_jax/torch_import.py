r"""Import PyTorch weights: ImageNet ResNets, the release's DeepLabV3+ and its whole checkpoints.

  python -m ddfp_jax.torch_import --input resnet101.pth --output resnet101.npz
  python -m ddfp_jax.torch_import --input ckpt_best.pth --output ddfp_teacher.npz \
      --kind segmentation --key teacher_state
  python -m ddfp_jax.torch_import --input ckpt_best.pth --kind release_checkpoint \
      --config configs/pascal_732.py --workdir DIR [--config.KEY=VALUE ...]

Two kinds of PyTorch state dict are understood. A `module.` prefix (DistributedDataParallel)
is dropped; a training checkpoint is opened at `key` (default: the first of `model_state`,
`state_dict`, `model` that it has).

* backbone: an ImageNet ResNet, either torchvision's (plain 7x7 stem: `conv1.weight`,
  `bn1.*`, `layer1.0.conv1.weight`, ...) or the deep-stem `resnet50.pth` / `resnet101.pth`
  of CPS / U2PL / UniMatch / DDFP (stem `conv1.0`, `conv1.1`, `conv1.3`, `conv1.4`,
  `conv1.6` = conv, BN, -, conv, BN, -, conv; then `bn1`). The ImageNet classifier `fc.*`
  is dropped.
* segmentation: the release's DeepLabV3+ (`encoder.*`: the deep-stem ResNet; `decoder.*`:
  `aspp.conv1.1/.2` image-pooling conv/BN, `aspp.conv2..5.0/.1` the 1x1 and three dilated
  branches, `head.0/.1`, `low_conv.0/.1`, `classifier.0/.1/.4/.5` with each mixed
  BatchNorm's auxiliary set under `.aux_bn`, and `final`), e.g. the `model_state` (student)
  or `teacher_state` of the release's `ckpt.pth`.

Conv weights go from OIHW to HWIO; BatchNorm weight / bias / running_mean / running_var
become scale / bias / mean / var; `num_batches_tracked` is dropped. The conversion is
strict: every array of the target model must be found with the right shape, and every
tensor of the file must be used or be one of those dropped; otherwise one
`StateDictMismatch` lists what is missing, unexpected or mis-shaped.

A converted `.npz` holds the Flax variables flat (`params/backbone/layer1_0/conv1/kernel`,
...) and loads without PyTorch. `config.model.pretrained` accepts either file: a backbone
file fills the student's (and so the teacher's) backbone, a segmentation file the whole
model. PyTorch is imported only to read a `.pth`.

A third kind, release_checkpoint, is a whole training checkpoint of the release (the dict
its train script saves with torch.save: `model_state` the student, `teacher_state` the
teacher, `nf_model_state` the flow with its GMM `means`, plus `epoch`, `best_miou` and
optimiser states, every state dict with DistributedDataParallel's `module.`).
`import_release_checkpoint` converts student, teacher and flow into a train state of the
given config and writes it as an orbax checkpoint into `workdir/checkpoints/latest/STEP`,
so that `python main.py --config ... --workdir DIR --mode eval` scores it. The optimiser
states are not converted (the train state's are fresh), nor is the release's progress:
the checkpoint's step is `step` (0 unless given), so training in that workdir starts from
the imported weights rather than resuming the release's run.

Release checkpoints hold a NumPy float (`best_miou`); loading allows NumPy scalars and
dtypes besides tensors, and nothing else unless `trust_pickle`.
"""
import argparse
import os
import pickle
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.deeplab import DeepLabV3Plus
from ddfp_jax.flow import flow_params_from_torch
from ddfp_jax.resnet import RESNET_LAYOUTS, ResNet

PyTree = Any
KINDS = ("backbone", "segmentation")
RELEASE_CHECKPOINT = "release_checkpoint"
# Entries of the release's training checkpoint: student, teacher, flow (with its means).
RELEASE_ENTRIES = ("model_state", "teacher_state", "nf_model_state")
_COLLECTIONS = ("params", "batch_stats")
# Checkpoint entries that hold a model's state dict (U2PL / DDFP save "model_state").
_CHECKPOINT_KEYS = ("model_state", "state_dict", "model")
_BACKBONE_DROPPED = ("fc.weight", "fc.bias")  # the ImageNet classifier

# Flax module (relative to ResNet) -> PyTorch module, for the stem.
_STEM = {"stem_conv1": "conv1.0", "stem_bn1": "conv1.1", "stem_conv2": "conv1.3",
         "stem_bn2": "conv1.4", "stem_conv3": "conv1.6", "conv1": "conv1", "bn1": "bn1"}
_SHORTCUT = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
# Flax module (relative to DeepLabV3Plus) -> the release's module under `decoder.`.
_DECODER = {"head_conv": "head.0", "head_bn": "head.1", "low_conv": "low_conv.0",
            "low_bn": "low_conv.1", "classifier_conv1": "classifier.0",
            "classifier_bn1": "classifier.1", "classifier_conv2": "classifier.4",
            "classifier_bn2": "classifier.5", "final": "final"}
# Index 0 of the release's image-pooling branch is the pooling itself.
_ASPP = {"pool_conv": "conv1.1", "pool_bn": "conv1.2", "conv1x1_conv": "conv2.0",
         "conv1x1_bn": "conv2.1"}
_MIXED_BN = {"main": "", "aux": ".aux_bn"}
_LEAVES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
           ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


class StateDictMismatch(ValueError):
  """A weight file and the model disagree; lists every missing, unexpected and mis-shaped
  entry (the first few of each by name, all of them by count)."""

  def __init__(self, source: str, missing: Sequence[str], unexpected: Sequence[str],
               wrong_shape: Sequence[str], shown: int = 5):
    self.missing, self.unexpected, self.wrong_shape = (
        list(missing), list(unexpected), list(wrong_shape))
    parts = []
    for what, names in (("missing", self.missing), ("unexpected", self.unexpected),
                        ("with the wrong shape", self.wrong_shape)):
      if names:
        more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
        parts.append(f"{len(names)} {what}: " + ", ".join(names[:shown]) + more)
    super().__init__(f"{source} does not match the model: " + "; ".join(parts) + ".")


def _backbone_module(path: Sequence[str]) -> str:
  if len(path) == 1 and path[0] in _STEM:
    return _STEM[path[0]]
  block = re.fullmatch(r"layer(\d+)_(\d+)", path[0])
  if block and len(path) == 2:
    return f"layer{block[1]}.{block[2]}.{_SHORTCUT.get(path[1], path[1])}"
  raise ValueError(f"no PyTorch name for backbone module {'/'.join(path)}")


def _decoder_module(path: Sequence[str]) -> str:
  if path[0] == "aspp" and len(path) == 2:
    if path[1] in _ASPP:
      return "aspp." + _ASPP[path[1]]
    branch = re.fullmatch(r"atrous(\d+)_(conv|bn)", path[1])
    if branch:
      return f"aspp.conv{int(branch[1]) + 2}.{0 if branch[2] == 'conv' else 1}"
  elif path[0] in _DECODER:
    if len(path) == 1:
      return _DECODER[path[0]]
    if len(path) == 2 and path[1] in _MIXED_BN:
      return _DECODER[path[0]] + _MIXED_BN[path[1]]
  raise ValueError(f"no PyTorch name for decoder module {'/'.join(path)}")


def torch_name(collection: str, path: Sequence[str], kind: str) -> str:
  """PyTorch state-dict key of the Flax leaf `collection/path`.

  `path` is relative to a `ResNet` for kind "backbone" and to a `DeepLabV3Plus` for kind
  "segmentation"; e.g. ("params", ("backbone", "layer3_5", "downsample_bn", "scale"),
  "segmentation") -> "encoder.layer3.5.downsample.1.weight".
  """
  *module, leaf = path
  suffix = _LEAVES[(collection, leaf)]
  if kind == "backbone":
    prefix = _backbone_module(module)
  elif module[0] == "backbone":
    prefix = "encoder." + _backbone_module(module[1:])
  else:
    prefix = "decoder." + _decoder_module(module)
  return f"{prefix}.{suffix}"


def strip_module_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops the `module.` that DistributedDataParallel puts before every key."""
  out = {}
  for key, value in state_dict.items():
    name = key
    while name.startswith("module."):
      name = name[len("module."):]
    if name in out:
      raise ValueError(f"state dict has {name!r} twice (with and without 'module.')")
    out[name] = value
  return out


def detect_kind(state_dict: Mapping[str, Any]) -> str:
  """"segmentation" if the (prefix-stripped) keys hold `encoder.` / `decoder.`, else
  "backbone"."""
  keys = strip_module_prefix(state_dict)
  if any(k.startswith(("encoder.", "decoder.")) for k in keys):
    return "segmentation"
  return "backbone"


def encoder_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """The backbone part (`encoder.*`, prefix removed) of a segmentation state dict."""
  return {k[len("encoder."):]: v for k, v in strip_module_prefix(state_dict).items()
          if k.startswith("encoder.")}


def _dropped(key: str, kind: str) -> bool:
  if key == "num_batches_tracked" or key.endswith(".num_batches_tracked"):
    return True
  return kind == "backbone" and key in _BACKBONE_DROPPED


def _torch_shape(flax_key: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if flax_key[-1] == "kernel" and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return shape


def _convert(state_dict: Mapping[str, Any], target: PyTree, kind: str,
             source: str) -> Tuple[PyTree, List[str]]:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  state_dict = strip_module_prefix(state_dict)
  flat_target = traverse_util.flatten_dict({c: target[c] for c in _COLLECTIONS})
  expected = {torch_name(key[0], key[1:], kind): key for key in flat_target}
  missing = [name for name in expected if name not in state_dict]
  unexpected, dropped = [], []
  for name in state_dict:
    if name not in expected:
      (dropped if _dropped(name, kind) else unexpected).append(name)
  wrong_shape, flat = [], {}
  for name, key in expected.items():
    if name not in state_dict:
      continue
    value = np.asarray(state_dict[name], np.float32)
    want = _torch_shape(key, tuple(flat_target[key].shape))
    if value.shape != want:
      wrong_shape.append(f"{name} (file {value.shape}, model {want})")
      continue
    if key[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    flat[key] = value
  if missing or unexpected or wrong_shape:
    raise StateDictMismatch(source, missing, unexpected, wrong_shape)
  return traverse_util.unflatten_dict(flat), dropped


def convert_state_dict(state_dict: Mapping[str, Any], target: PyTree, kind: str,
                       source: str = "the state dict") -> PyTree:
  """PyTorch state dict -> Flax variables {"params", "batch_stats"} shaped like `target`.

  Args:
    state_dict: names to arrays (NumPy, or CPU torch tensors).
    target: variables (or `jax.eval_shape` of them) of a `ResNet` for kind "backbone", of a
      `DeepLabV3Plus` for kind "segmentation"; only the shapes are used.
    kind: "backbone" or "segmentation" (see the module docstring for the key layouts).
    source: how to name the state dict in an error message.

  Returns:
    float32 NumPy arrays in the tree structure of `target`'s params and batch_stats.

  Raises:
    StateDictMismatch: if a target array is missing from the state dict, the state dict has
      a tensor that maps to nothing (other than `num_batches_tracked` and, for a backbone,
      `fc.*`), or a shape differs.
  """
  return _convert(state_dict, target, kind, source)[0]


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (the CPU build is enough). Alternatively convert it "
        f"once where PyTorch is installed: python -m ddfp_jax.torch_import --input {path} "
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


def infer_architecture(state_dict: Mapping[str, Any], kind: str) -> Dict[str, Any]:
  """Depth, stem, width (and classes, for a segmentation model) from the keys and shapes."""
  state_dict = strip_module_prefix(state_dict)
  encoder = encoder_state_dict(state_dict) if kind == "segmentation" else state_dict
  deep_stem = "conv1.0.weight" in encoder
  stem_key = "conv1.0.weight" if deep_stem else "conv1.weight"
  if stem_key not in encoder:
    raise ValueError(f"no ResNet stem (conv1.0.weight or conv1.weight) among the "
                     f"{'encoder.' if kind == 'segmentation' else ''}keys")
  blocks = []
  for stage in range(1, 5):
    indices = {int(m[1]) for k in encoder if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
    blocks.append(max(indices) + 1 if indices else 0)
  bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.weight$", k) for k in encoder)
  depths = [d for d, layout in RESNET_LAYOUTS.items() if layout == (bottleneck, tuple(blocks))]
  if not depths:
    raise ValueError(f"blocks per stage {tuple(blocks)} "
                     f"({'bottleneck' if bottleneck else 'basic'}) are no known ResNet depth")
  arch = dict(depth=depths[0], deep_stem=deep_stem, width=encoder[stem_key].shape[0] / 64)
  if kind == "segmentation":
    if "decoder.final.weight" not in state_dict:
      raise ValueError("segmentation state dict without decoder.final.weight")
    arch["num_classes"] = int(state_dict["decoder.final.weight"].shape[0])
  return arch


def target_shapes(arch: Mapping[str, Any], kind: str) -> PyTree:
  """`jax.eval_shape` of the variables of the model that `arch` describes."""
  if kind == "backbone":
    model = ResNet(depth=arch["depth"], deep_stem=arch["deep_stem"], width=arch["width"])
  else:
    model = DeepLabV3Plus(num_classes=arch["num_classes"], depth=arch["depth"],
                          deep_stem=arch["deep_stem"], width=arch["width"])
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), image)


def save_npz(path: str, variables: PyTree) -> None:
  """Writes variables flat, one array per leaf, keyed like `params/backbone/bn1/scale`."""
  flat = traverse_util.flatten_dict({c: variables[c] for c in _COLLECTIONS if c in variables},
                                    sep="/")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_npz(path: str) -> PyTree:
  with np.load(path) as data:
    return traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")


def _under_backbone(tree: PyTree) -> PyTree:
  return {c: {"backbone": tree[c]} for c in _COLLECTIONS}


def _backbone_of(tree: PyTree) -> PyTree:
  return {c: tree[c]["backbone"] for c in _COLLECTIONS}


def _merge(variables: PyTree, partial: PyTree, source: str) -> PyTree:
  """`variables` with the leaves that `partial` holds replaced by its arrays.

  `partial` must cover either the backbone or the whole model exactly, with the same
  shapes; the result keeps `variables`' dtypes.
  """
  flat_vars = traverse_util.flatten_dict(dict(variables))
  flat_new = traverse_util.flatten_dict(dict(partial))
  backbone_only = all(len(k) > 1 and k[1] == "backbone" for k in flat_new)
  scope = [k for k in flat_vars if k[0] in _COLLECTIONS and (not backbone_only or
                                                             k[1] == "backbone")]
  name = "/".join
  missing = [name(k) for k in scope if k not in flat_new]
  unexpected = [name(k) for k in flat_new if k not in flat_vars]
  wrong_shape = [f"{name(k)} (file {tuple(v.shape)}, model {tuple(flat_vars[k].shape)})"
                 for k, v in flat_new.items()
                 if k in flat_vars and tuple(v.shape) != tuple(flat_vars[k].shape)]
  if missing or unexpected or wrong_shape:
    raise StateDictMismatch(source, missing, unexpected, wrong_shape)
  for k, v in flat_new.items():
    flat_vars[k] = jnp.asarray(v, dtype=flat_vars[k].dtype)
  return traverse_util.unflatten_dict(flat_vars)


def _read(variables: PyTree, path: str, key: Optional[str], backbone_only: bool,
          trust_pickle: bool) -> PyTree:
  """The file at `path` as (part of) a DeepLabV3Plus variable tree."""
  path = str(path)
  if path.endswith(".npz"):
    partial = load_npz(path)
    if backbone_only:
      if any("backbone" not in partial.get(c, {}) for c in _COLLECTIONS):
        raise ValueError(f"{path} holds no backbone (params/backbone/...)")
      partial = _under_backbone(_backbone_of(partial))
    return partial
  state_dict = strip_module_prefix(read_torch_file(path, key, trust_pickle))
  if detect_kind(state_dict) == "segmentation":
    if not backbone_only:
      return convert_state_dict(state_dict, variables, "segmentation", path)
    state_dict = encoder_state_dict(state_dict)
  return _under_backbone(convert_state_dict(state_dict, _backbone_of(variables), "backbone",
                                            path))


def load_pretrained(variables: PyTree, path: str, key: Optional[str] = None,
                    trust_pickle: bool = False) -> PyTree:
  """Loads a weight file into DeepLabV3Plus variables: a backbone file (ImageNet ResNet)
  replaces the backbone, a segmentation file (the release's model) everything.

  Args:
    variables: {"params", "batch_stats"} of a `DeepLabV3Plus`.
    path: a converted `.npz`, or a PyTorch `.pth` / `.pt` (needs torch).
    key: checkpoint entry holding the state dict (e.g. "teacher_state"); .pth only.
    trust_pickle: let `torch.load` unpickle arbitrary objects (.pth only).

  Raises:
    StateDictMismatch: listing missing, unexpected and mis-shaped arrays.
  """
  return _merge(variables, _read(variables, path, key, False, trust_pickle), str(path))


def load_pretrained_backbone(variables: PyTree, path: str, key: Optional[str] = None,
                             trust_pickle: bool = False) -> PyTree:
  """Like `load_pretrained`, but only the backbone is replaced; from a segmentation file
  only its encoder is read."""
  return _merge(variables, _read(variables, path, key, True, trust_pickle), str(path))


def read_torch_checkpoint(path: str, trust_pickle: bool = False) -> Dict[str, Any]:
  """A whole PyTorch checkpoint: state dicts (entries whose values are all tensors) as
  NumPy float32 dicts, other entries (epoch, metrics, optimiser states) as loaded."""
  torch = _import_torch(path)
  obj = _torch_load(torch, path, trust_pickle)
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
  out = {}
  for name, value in obj.items():
    if isinstance(value, Mapping) and value and all(torch.is_tensor(v) for v in value.values()):
      value = {k: v.detach().cpu().float().numpy() for k, v in value.items()}
    out[name] = value
  return out


# Keys of the release's flow module (after `module.`): the FrEIA net under `inn.`, the
# GMM means beside it. A coupling's linear layers, a permutation's fixed index arrays.
_FLOW_KEY = re.compile(r"(?:inn\.)?module_list\.(\d+)\."
                       r"(?:subnet[12]\.\d+\.(?:weight|bias)|perm|perm_inv)$")


def release_flow_variables(state_dict: Mapping[str, Any], target: PyTree,
                           source: str = "the flow state dict") -> PyTree:
  """The release's flow state dict (`nf_model_state`) -> `FeatureDensity` variables.

  Args:
    state_dict: `inn.module_list.*` (FrEIA's GLOWCouplingBlock / PermuteRandom) and
      `means` (K, D), with or without `module.`.
    target: `FeatureDensity` variables ({"params": {"flow", "means"}}) or their shapes.
    source: how to name the state dict in an error message.

  Raises:
    StateDictMismatch: for a tensor that is no part of the flow, missing means, or arrays
      whose shapes differ from `target` (another feature width, subnet width or number of
      classes).
  """
  state_dict = strip_module_prefix(state_dict)
  unexpected = [k for k in state_dict if k != "means" and not _FLOW_KEY.match(k)]
  missing = [] if "means" in state_dict else ["means"]
  if unexpected or missing:
    raise StateDictMismatch(source, missing, unexpected, [])
  num_blocks = sum(1 for _ in target["params"]["flow"])
  try:
    flow = flow_params_from_torch(state_dict, num_blocks)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{source}: {e.args[0] if e.args else e}") from e
  params = {"flow": flow, "means": np.asarray(state_dict["means"], np.float32)}
  flat_new = traverse_util.flatten_dict(params)
  flat_target = traverse_util.flatten_dict(dict(target["params"]))
  name = "/".join
  wrong_shape = [f"{name(k)} (file {tuple(v.shape)}, model {tuple(flat_target[k].shape)})"
                 for k, v in flat_new.items()
                 if k in flat_target and tuple(v.shape) != tuple(flat_target[k].shape)]
  missing = [name(k) for k in flat_target if k not in flat_new]
  if wrong_shape or missing:
    raise StateDictMismatch(source, missing, [], wrong_shape)
  return {"params": traverse_util.unflatten_dict(
      {k: jnp.asarray(v, flat_target[k].dtype) for k, v in flat_new.items()})}


def release_train_state(checkpoint: Mapping[str, Any], config, source: str = "the checkpoint"):
  """A `TrainState` of `config` holding the release checkpoint's student, teacher and flow.

  Everything else (step 0, fresh optimiser states, the RNG key) is what
  `create_train_state(config, key(config.seed))` gives; `config.model.pretrained` is not
  read.
  """
  from ddfp_jax.state import create_train_state  # pylint: disable=g-import-not-at-top
  missing = [k for k in RELEASE_ENTRIES if not isinstance(checkpoint.get(k), Mapping)]
  if missing:
    raise ValueError(f"{source} is not a training checkpoint of the release: it has no "
                     f"{', '.join(missing)} (its entries: {sorted(map(str, checkpoint))}). "
                     f"A state dict of one model converts with --kind segmentation.")
  config = config.copy_and_resolve_references()
  config.model.pretrained = None
  key = jax.random.key(config.seed)
  # Shapes first (no compilation), so that a checkpoint that does not fit fails at once.
  shapes = jax.eval_shape(lambda k: create_train_state(config, k), key)
  models = {}
  for entry in ("model_state", "teacher_state"):
    target = {"params": shapes.params, "batch_stats": shapes.batch_stats}
    converted = convert_state_dict(checkpoint[entry], target, "segmentation",
                                   f"{source} [{entry}]")
    models[entry] = jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), converted, target)
  flow = release_flow_variables(checkpoint["nf_model_state"], shapes.flow_params,
                                f"{source} [nf_model_state]")
  state = create_train_state(config, key)
  return state.replace(
      params=models["model_state"]["params"],
      batch_stats=models["model_state"]["batch_stats"],
      teacher_params=models["teacher_state"]["params"],
      teacher_batch_stats=models["teacher_state"]["batch_stats"],
      flow_params=flow)


def import_release_checkpoint(path: str, config, workdir: str, step: int = 0,
                              trust_pickle: bool = False) -> str:
  """Converts the release's training checkpoint at `path` into an orbax checkpoint of
  `config`'s train state in `workdir/checkpoints/latest/step` (see the module docstring);
  returns a report.

  Raises:
    ValueError: if the file is not a release checkpoint, `workdir` already holds
      checkpoints, or (StateDictMismatch) the checkpoint does not fit `config`'s model or
      flow.
  """
  from ddfp_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  path = str(path)
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  ckpt_dir = os.path.join(str(workdir), "checkpoints")
  checkpointer = Checkpointer(ckpt_dir, keep=config.train.keep_checkpoints)
  try:
    if checkpointer.latest_step() is not None:
      raise ValueError(f"{ckpt_dir} already holds checkpoints (latest step "
                       f"{checkpointer.latest_step()}); import into an empty workdir.")
    checkpoint = read_torch_checkpoint(path, trust_pickle)
    state = release_train_state(checkpoint, config, path)
    state = state.replace(step=jnp.asarray(step, state.step.dtype))
    checkpointer.save(step, state, force=True)
    checkpointer.wait()
  finally:
    checkpointer.close()
  arch = infer_architecture(strip_module_prefix(checkpoint["model_state"]), "segmentation")
  means = strip_module_prefix(checkpoint["nf_model_state"])["means"]
  progress = ", ".join(f"{k} {checkpoint[k]}" for k in ("epoch", "best_miou")
                       if k in checkpoint and np.ndim(checkpoint[k]) == 0)
  return (f"{path}: {_describe(arch, 'segmentation')}, student and teacher, and a flow of "
          f"{sum(1 for _ in state.flow_params['params']['flow'])} coupling blocks with "
          f"{means.shape[0]} GMM means of dimension {means.shape[1]}"
          + (f" ({progress})" if progress else "") + f" -> {ckpt_dir}/latest/{step} "
          f"(optimiser states fresh).")


def load_config(config_file: str, overrides: Sequence[str] = ()):
  """A config file with `--config.KEY=VALUE` overrides, parsed as main.py parses them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  bad = [a for a in overrides if not a.startswith("--config.")]
  if bad:
    raise ValueError(f"unrecognised arguments: {' '.join(bad)}")
  argv = ["torch_import", f"--config={config_file}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    config = values.config
    config.keys()  # loading is lazy: a missing file fails here
  except (flags.Error, OSError, SyntaxError, AttributeError, ImportError, KeyError,
          TypeError) as e:
    reason = " ".join(str(e).split())
    raise ValueError(f"the config cannot be loaded ({reason})") from e
  return config


def _describe(arch: Mapping[str, Any], kind: str) -> str:
  width = "" if arch["width"] == 1.0 else f" (width x{arch['width']:g})"
  resnet = (f"{'deep-stem' if arch['deep_stem'] else 'plain-stem'} "
            f"ResNet-{arch['depth']}{width}")
  if kind == "backbone":
    return f"{resnet} backbone"
  return f"DeepLabV3+ on a {resnet}, {arch['num_classes']} classes"


def convert_file(input_path: str, output_path: str, kind: Optional[str] = None,
                 key: Optional[str] = None, trust_pickle: bool = False) -> str:
  """Converts a PyTorch file into an `.npz` for `config.model.pretrained`; returns a
  report of what was converted and what was dropped."""
  state_dict = strip_module_prefix(read_torch_file(input_path, key, trust_pickle))
  found = detect_kind(state_dict)
  kind = kind or found
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if kind == "segmentation" and found == "backbone":
    raise ValueError(f"{input_path} has no encoder./decoder. keys: it holds a backbone, "
                     f"not the release's segmentation model")
  extra = []
  if kind == "backbone" and found == "segmentation":
    extra = [k for k in state_dict if not k.startswith("encoder.")]
    state_dict = encoder_state_dict(state_dict)
  arch = infer_architecture(state_dict, kind)
  variables, dropped = _convert(state_dict, target_shapes(arch, kind), kind, input_path)
  if kind == "backbone":
    variables = _under_backbone(variables)
  if not output_path.endswith(".npz"):
    output_path += ".npz"
  save_npz(output_path, variables)
  counts = {c: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables[c]))
            for c in _COLLECTIONS}
  arrays = len(jax.tree.leaves(variables))
  batches = [k for k in dropped if k.endswith("num_batches_tracked")]
  others = [k for k in dropped if k not in batches] + (
      [f"{len(extra)} decoder tensors"] if extra else [])
  notes = ", ".join(others + ([f"{len(batches)} num_batches_tracked"] if batches else []))
  return (f"{input_path}: {_describe(arch, kind)} -> {output_path}: {arrays} arrays, "
          f"{counts['params']:,} parameters and {counts['batch_stats']:,} BatchNorm "
          f"statistics" + (f"; dropped {notes}" if notes else "") + ".")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m ddfp_jax.torch_import",
      description="Convert PyTorch ResNet / DeepLabV3+ weights into an .npz for "
                  "config.model.pretrained, or the release's training checkpoint into a "
                  "checkpoint that main.py --mode eval scores. Further --config.KEY=VALUE "
                  "arguments override the config, as on main.py.")
  parser.add_argument("--input", required=True, help="PyTorch file (.pth / .pt).")
  parser.add_argument("--output", default=None,
                      help="Where to write the .npz (kinds backbone and segmentation).")
  parser.add_argument("--kind", choices=KINDS + (RELEASE_CHECKPOINT,), default=None,
                      help="What the file holds (default: detected among backbone and "
                           "segmentation). 'backbone' on a segmentation file converts only "
                           "its encoder; 'release_checkpoint' converts the student, teacher "
                           "and flow of the release's ckpt.pth into --workdir.")
  parser.add_argument("--key", default=None,
                      help="Checkpoint entry holding the state dict, e.g. teacher_state "
                           "(default: model_state, state_dict or model).")
  parser.add_argument("--config", default=None,
                      help="release_checkpoint: the config file the checkpoint will be "
                           "evaluated (or trained further) with.")
  parser.add_argument("--workdir", default=None,
                      help="release_checkpoint: the run directory to write "
                           "checkpoints/latest/STEP into (must hold no checkpoint yet).")
  parser.add_argument("--step", type=int, default=0,
                      help="release_checkpoint: the step to store the state under.")
  parser.add_argument("--trust_pickle", action="store_true",
                      help="Let torch.load unpickle arbitrary objects.")
  args, rest = parser.parse_known_args(argv)
  try:
    if args.kind == RELEASE_CHECKPOINT:
      if not args.config or not args.workdir:
        parser.error("--kind release_checkpoint needs --config and --workdir")
      from ddfp_jax.config_check import check_config  # pylint: disable=g-import-not-at-top
      config = load_config(args.config, rest)
      check_config(config)
      print(import_release_checkpoint(args.input, config, args.workdir, args.step,
                                      args.trust_pickle))
      print("Score it with: python main.py " + " ".join(
          [f"--config {args.config}", f"--workdir {args.workdir}", "--mode eval", *rest]))
      return 0
    if rest:
      parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if not args.output:
      parser.error("--output is required (except with --kind release_checkpoint)")
    print(convert_file(args.input, args.output, args.kind, args.key, args.trust_pickle))
  except (ValueError, KeyError, ImportError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
