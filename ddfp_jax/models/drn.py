"""DRN-D encoders (dilated residual networks, Yu et al., CVPR 2017; NHWC, Flax linen).

USSS's shared encoder: DRN-D-22, -38, -54 or -105 (the fyu/drn release's `drn_d_*`),
returning 512-channel features at output stride 8 (its avgpool and ImageNet `fc` dropped).

Layout, layer0 ... layer8, channels (16, 32, 64, 128, 256, 512, 512, 512):
layer0 is a 7x7 conv at stride 1 and layers 1, 2, 7 and 8 plain conv-BN-ReLU units
(3x3; layer2's first at stride 2, layer7's dilated 2). Layers 1 and 2 replace a ResNet's
stride-2 stem and max-pool, whose high-amplitude, high-frequency activations the dilated
layers turn into gridding artefacts; layers 7 and 8, without residual connections and at
decreasing dilation, smooth out what gridding remains (the paper's "degridding"). Layers
3 to 6 are ResNet stages: 3 and 4 at stride 2, 5 and 6 at stride 1 with dilation 2 and 4,
so the output stays at stride 8.

The residual blocks are resnet.py's `BasicBlock` / `Bottleneck`. They are exactly DRN-D's:
fyu/drn gives a block a (first conv, second conv) dilation pair, (d // 2, d) only for the
first block of a dilated layer that opens a new level, but DRN-D builds layers 5 and 6
without that flag, so every block of a layer has (d, d); its Bottleneck reads only the
second entry anyway (on its 3x3 conv, which carries the stride, as here). Its `residual`
flag is off only in DRN-C's last two layers, which DRN-D replaces by conv units.

Module names map mechanically onto fyu/drn's state-dict keys
(`ddfp_jax.interop.names`, kind "drn"): the i-th conv unit of layer l is `layer{l}_{i}`
with `conv` / `bn` (PyTorch `layer{l}.{3i}` / `layer{l}.{3i+1}`, its Sequential holding
conv, BN, ReLU per unit); block i of layer l is `layer{l}_{i}` with resnet.py's names.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from ddfp_jax.models.layers import BatchNorm, conv, scaled
from ddfp_jax.models.resnet import BasicBlock, Bottleneck

Dtype = Any

# depth -> (bottleneck?, units or blocks in layer1 ... layer8)
DRN_LAYOUTS = {
    22: (False, (1, 1, 2, 2, 2, 2, 1, 1)),
    38: (False, (1, 1, 3, 4, 6, 3, 1, 1)),
    54: (True, (1, 1, 3, 4, 6, 3, 1, 1)),
    105: (True, (1, 1, 3, 4, 23, 3, 1, 1)),
}
DRN_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
# layer1 ... layer8: (residual blocks?, stride of the first unit or block, dilation)
DRN_LAYERS = ((False, 1, 1), (False, 2, 1), (True, 2, 1), (True, 2, 1), (True, 1, 2),
              (True, 1, 4), (False, 1, 2), (False, 1, 1))
# The layers made of plain conv units (layer0 included), not of residual blocks.
CONV_UNIT_LAYERS = (0,) + tuple(i + 1 for i, (blocks, _, _) in enumerate(DRN_LAYERS)
                                if not blocks)


class ConvBNReLU(nn.Module):
  """conv (no bias) - BatchNorm - ReLU, DRN-D's non-residual unit."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.features, self.kernel_size, self.stride, self.dilation, dtype=self.dtype,
             atrous_impl=self.atrous_impl, name="conv")(x)
    return nn.relu(BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name="bn")(x, train))


class DRN(nn.Module):
  """DRN-D returning the stride-8 features of layer8 (512 channels times `width`).

  Attributes:
    depth: 22, 38 (basic blocks), 54 or 105 (bottlenecks).
    width: multiplier on every channel count (1.0 is the real model).
    axis_name: device axis over which BatchNorm statistics are synchronised in training.
    dtype: compute dtype; parameters stay float32.
    atrous_impl: how the dilated layers compute their convolutions
      (`layers.ATROUS_IMPLS`; the same parameters and outputs for each).
  """
  depth: int = 22
  width: float = 1.0
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.depth not in DRN_LAYOUTS:
      raise ValueError(f"DRN-D depth must be one of {sorted(DRN_LAYOUTS)}, got {self.depth}.")
    bottleneck, layout = DRN_LAYOUTS[self.depth]
    block_cls = Bottleneck if bottleneck else BasicBlock
    common = dict(axis_name=self.axis_name, dtype=self.dtype, atrous_impl=self.atrous_impl)

    x = x.astype(self.dtype)
    in_planes = scaled(DRN_CHANNELS[0], self.width)
    x = ConvBNReLU(in_planes, 7, **common, name="layer0_0")(x, train)
    for layer, (count, channels, (residual, stride, dilation)) in enumerate(
        zip(layout, DRN_CHANNELS, DRN_LAYERS), start=1):
      planes = scaled(channels, self.width)
      for i in range(count):
        first_stride = stride if i == 0 else 1
        name = f"layer{layer}_{i}"
        if not residual:
          x = ConvBNReLU(planes, 3, first_stride, dilation, **common, name=name)(x, train)
          in_planes = planes
          continue
        out_planes = planes * block_cls.expansion
        x = block_cls(planes=planes, stride=first_stride, dilation=dilation,
                      downsample=(i == 0 and (stride != 1 or in_planes != out_planes)),
                      **common, name=name)(x, train)
        in_planes = out_planes
    return x
