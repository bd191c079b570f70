"""Names: which PyTorch state-dict key each Flax leaf is, and what the keys say.

Two kinds of PyTorch state dict are understood. A `module.` prefix (DistributedDataParallel)
is dropped.

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

A third layout, kind "drn" (not detected: no config takes it yet), is fyu/drn's DRN-D
(`drn_d_22-4bd2f8ea.pth` ...; `ddfp_jax.models.drn`): `layer0.0/.1` (7x7 conv, BN),
conv-unit layers `layer1`, `layer2`, `layer7`, `layer8` as Sequentials of conv, BN, ReLU
(`layer7.0`, `layer7.1`, `layer7.3`, ...), residual layers `layer3` ... `layer6` with the
ResNet block names above, and the ImageNet classifier `fc.*` (a 1x1 conv), dropped.

BatchNorm weight / bias / running_mean / running_var are scale / bias / mean / var;
`num_batches_tracked` is dropped. The architecture (depth, stem, width, classes) is read
from the keys and shapes, so that a file converts without being told what it holds.
`StateDictMismatch` is the one error for names (or shapes) that do not match a model.
"""
import re
from typing import Any, Dict, Mapping, Sequence

from ddfp_jax.models.drn import CONV_UNIT_LAYERS
from ddfp_jax.models.resnet import RESNET_LAYOUTS

KINDS = ("backbone", "segmentation")  # what a file for `config.model.pretrained` holds
DRN_KIND = "drn"  # the third layout, converted by `pretrained.convert_drn_state_dict`
COLLECTIONS = ("params", "batch_stats")
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
# A DRN conv unit's place in its layer's Sequential of (conv, BN, ReLU) triples.
_CONV_UNIT = {"conv": 0, "bn": 1}
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


def _drn_module(path: Sequence[str]) -> str:
  unit = re.fullmatch(r"layer(\d+)_(\d+)", path[0]) if len(path) == 2 else None
  if unit and int(unit[1]) not in CONV_UNIT_LAYERS:
    return _backbone_module(path)
  if unit and path[1] in _CONV_UNIT:
    return f"layer{unit[1]}.{3 * int(unit[2]) + _CONV_UNIT[path[1]]}"
  raise ValueError(f"no PyTorch name for DRN module {'/'.join(path)}")


def torch_name(collection: str, path: Sequence[str], kind: str) -> str:
  """PyTorch state-dict key of the Flax leaf `collection/path`.

  `path` is relative to a `ResNet` for kind "backbone", to a `DeepLabV3Plus` for kind
  "segmentation" and to a `DRN` for kind "drn"; e.g. ("params", ("backbone", "layer3_5",
  "downsample_bn", "scale"), "segmentation") -> "encoder.layer3.5.downsample.1.weight",
  ("batch_stats", ("layer7_0", "bn", "var"), "drn") -> "layer7.1.running_var".
  """
  *module, leaf = path
  suffix = _LEAVES[(collection, leaf)]
  if kind == "backbone":
    prefix = _backbone_module(module)
  elif kind == DRN_KIND:
    prefix = _drn_module(module)
  elif module[0] == "backbone":
    prefix = "encoder." + _backbone_module(module[1:])
  else:
    prefix = "decoder." + _decoder_module(module)
  return f"{prefix}.{suffix}"


def is_dropped(key: str, kind: str) -> bool:
  """Whether the PyTorch tensor `key` maps to nothing on purpose (`num_batches_tracked`;
  for a backbone or a DRN, the ImageNet classifier `fc.*`) rather than being unexpected."""
  if key == "num_batches_tracked" or key.endswith(".num_batches_tracked"):
    return True
  return kind in ("backbone", DRN_KIND) and key in _BACKBONE_DROPPED


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


def describe_architecture(arch: Mapping[str, Any], kind: str) -> str:
  """`infer_architecture`'s result in words, for the import reports."""
  width = "" if arch["width"] == 1.0 else f" (width x{arch['width']:g})"
  resnet = (f"{'deep-stem' if arch['deep_stem'] else 'plain-stem'} "
            f"ResNet-{arch['depth']}{width}")
  if kind == "backbone":
    return f"{resnet} backbone"
  return f"DeepLabV3+ on a {resnet}, {arch['num_classes']} classes"
