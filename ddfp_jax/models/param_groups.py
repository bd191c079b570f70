"""Which parameters are the ImageNet-pretrained trunk ("backbone") and which are new.

The student's optimiser gives the two groups their own learning rates
(`optim.decoder_lr_mult`), so it must find the trunk in every model the framework
builds:

- `DeepLabV3Plus`: its `backbone` (the ResNet); ASPP, decoder and classifier are new.
- `MultiDomainSegmenter` (USSS) with the "deeplab" encoder: the same ResNet, one level
  down (`encoder/model/backbone`); the per-domain heads and the embedding head are new.
- `MultiDomainSegmenter` with the "drn" encoder: the whole DRN-D (`encoder/...`), which
  the release initialises from ImageNet as one piece; the heads are new.
"""
from typing import Sequence


def is_backbone(path: Sequence[str]) -> bool:
  """True for a parameter of the pretrained trunk, given its path in the params tree."""
  path = tuple(path)
  if path[:1] == ("encoder",):
    if path[1:2] == ("model",):        # DeepLabFeatures: the DeepLabV3+ it wraps
      return path[2:3] == ("backbone",)
    return True                        # DRN-D: pretrained as a whole
  return path[:1] == ("backbone",)
