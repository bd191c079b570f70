"""Pretrained weights: PyTorch state dicts into Flax variables, and into a train state.

Conv weights go from OIHW to HWIO; BatchNorm tensors take their Flax names
(`ddfp_jax.interop.names`, which also lists the key layouts of the two kinds, backbone and
segmentation). The conversion is strict: every array of the target model must be found
with the right shape, and every tensor of the file must be used or be one of those dropped;
otherwise one `StateDictMismatch` lists what is missing, unexpected or mis-shaped.

`config.model.pretrained` accepts either kind of file, as a `.pth` or as the `.npz` that
`convert_file` writes: a backbone file fills the student's (and so the teacher's) backbone,
a segmentation file the whole model (`initial_train_state`).
"""
from typing import Any, List, Mapping, Optional, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.interop.merge import merge_checked
from ddfp_jax.interop.names import (COLLECTIONS, DRN_KIND, KINDS, StateDictMismatch,
                                    describe_architecture, detect_kind, encoder_state_dict,
                                    infer_architecture, is_dropped, strip_module_prefix,
                                    torch_name)
from ddfp_jax.interop.reading import load_npz, read_torch_file, save_npz
from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.resnet import ResNet
from ddfp_jax.training.state import create_train_state

PyTree = Any


def _torch_shape(flax_key: Tuple[str, ...], shape: Tuple[int, ...]) -> Tuple[int, ...]:
  if flax_key[-1] == "kernel" and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return shape


def _convert(state_dict: Mapping[str, Any], target: PyTree, kind: str,
             source: str) -> Tuple[PyTree, List[str]]:
  if kind not in KINDS + (DRN_KIND,):
    raise ValueError(f"kind must be one of {KINDS + (DRN_KIND,)}, got {kind!r}")
  state_dict = strip_module_prefix(state_dict)
  flat_target = traverse_util.flatten_dict({c: target[c] for c in COLLECTIONS})
  expected = {torch_name(key[0], key[1:], kind): key for key in flat_target}
  missing = [name for name in expected if name not in state_dict]
  unexpected, dropped = [], []
  for name in state_dict:
    if name not in expected:
      (dropped if is_dropped(name, kind) else unexpected).append(name)
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
    kind: "backbone" or "segmentation" (see `ddfp_jax.interop.names` for the key layouts).
    source: how to name the state dict in an error message.

  Returns:
    float32 NumPy arrays in the tree structure of `target`'s params and batch_stats.

  Raises:
    StateDictMismatch: if a target array is missing from the state dict, the state dict has
      a tensor that maps to nothing (other than `num_batches_tracked` and, for a backbone,
      `fc.*`), or a shape differs.
  """
  return _convert(state_dict, target, kind, source)[0]


def convert_drn_state_dict(state_dict: Mapping[str, Any], target: PyTree,
                           source: str = "the state dict") -> PyTree:
  """fyu/drn's DRN-D state dict (`drn_d_22-4bd2f8ea.pth` ..., `module.` prefix or not) ->
  Flax variables {"params", "batch_stats"} of a `ddfp_jax.models.drn.DRN` shaped like
  `target` (its variables or their `jax.eval_shape`), as float32 NumPy arrays.

  As strict as `convert_state_dict`: the ImageNet classifier `fc.*` and
  `num_batches_tracked` are dropped, anything else the model lacks, misses or shapes
  differently raises one `StateDictMismatch` (so a file of another depth or width, or of
  DRN-C, is refused).
  """
  return _convert(state_dict, target, DRN_KIND, source)[0]


def target_shapes(arch: Mapping[str, Any], kind: str) -> PyTree:
  """`jax.eval_shape` of the variables of the model that `arch` describes."""
  if kind == "backbone":
    model = ResNet(depth=arch["depth"], deep_stem=arch["deep_stem"], width=arch["width"])
  else:
    model = DeepLabV3Plus(num_classes=arch["num_classes"], depth=arch["depth"],
                          deep_stem=arch["deep_stem"], width=arch["width"])
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), image)


def _under_backbone(tree: PyTree) -> PyTree:
  return {c: {"backbone": tree[c]} for c in COLLECTIONS}


def _backbone_of(tree: PyTree) -> PyTree:
  return {c: tree[c]["backbone"] for c in COLLECTIONS}


def _merge(variables: PyTree, partial: PyTree, source: str) -> PyTree:
  """`variables` with the leaves that `partial` holds replaced by its arrays.

  `partial` must cover either the backbone or the whole model exactly, with the same
  shapes; the result keeps `variables`' dtypes.
  """
  flat_new = traverse_util.flatten_dict(dict(partial))
  backbone_only = all(len(k) > 1 and k[1] == "backbone" for k in flat_new)
  return merge_checked(
      dict(variables), partial, source,
      wanted=lambda k: k[0] in COLLECTIONS and (not backbone_only or k[1] == "backbone"))


def _read(variables: PyTree, path: str, key: Optional[str], backbone_only: bool,
          trust_pickle: bool) -> PyTree:
  """The file at `path` as (part of) a DeepLabV3Plus variable tree."""
  path = str(path)
  if path.endswith(".npz"):
    partial = load_npz(path)
    if backbone_only:
      if any("backbone" not in partial.get(c, {}) for c in COLLECTIONS):
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


def load_drn_encoder(variables: PyTree, path: str, trust_pickle: bool = False) -> PyTree:
  """USSS's model (`MultiDomainSegmenter` with the DRN-D encoder) with its encoder from
  fyu/drn's ImageNet file (`drn_d_22-4bd2f8ea.pth` ...) or from that file converted to
  `.npz` ({"params", "batch_stats"} of a `DRN`); heads and embedding head stay as they
  are. As strict as `convert_drn_state_dict`: another depth or width is refused."""
  path = str(path)
  encoder = {c: variables[c]["encoder"] for c in COLLECTIONS}
  if path.endswith(".npz"):
    partial = load_npz(path)
  else:
    partial = convert_drn_state_dict(read_torch_file(path, None, trust_pickle), encoder, path)
  merged = _merge(encoder, partial, path)
  return {c: {**variables[c], "encoder": merged[c]} for c in COLLECTIONS}


def initial_train_state(config, rng: jax.Array):
  """`create_train_state`, with the student and teacher from `config.model.pretrained`
  when it is set (a backbone file replaces the backbone, a converted segmentation model
  everything; for USSS a DRN-D file its encoder; the teacher starts as a copy either
  way)."""
  if not config.model.get("pretrained"):
    return create_train_state(config, rng)
  if config.method == "usss":
    return create_train_state(
        config, rng, lambda variables: load_drn_encoder(variables, config.model.pretrained))
  return create_train_state(
      config, rng, lambda variables: load_pretrained(variables, config.model.pretrained))


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
            for c in COLLECTIONS}
  arrays = len(jax.tree.leaves(variables))
  batches = [k for k in dropped if k.endswith("num_batches_tracked")]
  others = [k for k in dropped if k not in batches] + (
      [f"{len(extra)} decoder tensors"] if extra else [])
  notes = ", ".join(others + ([f"{len(batches)} num_batches_tracked"] if batches else []))
  return (f"{input_path}: {describe_architecture(arch, kind)} -> {output_path}: {arrays} "
          f"arrays, {counts['params']:,} parameters and {counts['batch_stats']:,} BatchNorm "
          f"statistics" + (f"; dropped {notes}" if notes else "") + ".")
