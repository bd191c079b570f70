"""ResNet backbones for segmentation (NHWC, Flax linen).

Two stems: the "deep stem" of CPS / U2PL / UniMatch / DDFP (three 3x3 convs, 64-64-128,
then BN-ReLU and a ceil-mode max-pool), and torchvision's plain 7x7 stem. Output stride 8
or 16 replaces the stride of the last one or two stages with dilation, exactly as
torchvision's `replace_stride_with_dilation` does: the first block of a dilated stage keeps
the previous dilation, the following blocks use the new one.

Multi-grid (`multi_grid`, DGCL's backbone): the last stage's blocks multiply their
dilation by the grid, block i by grid[i]; as in the U2PL-family releases, the first block
multiplies the previous dilation (its stride's), the others the stage's. At output
stride 16 with grid (2, 2, 4) the last stage's dilations are (2, 4, 8); at 8, (4, 8, 16).

Module names follow the PyTorch state-dict layout (`layer3_5/conv2`, `downsample_bn`, ...)
so that weight import is a mechanical rename.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ddfp_jax.models.layers import BatchNorm, conv, max_pool, scaled

Dtype = Any

# depth -> (bottleneck?, blocks per stage)
RESNET_LAYOUTS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}

# output stride -> which of stages 2, 3, 4 trade their stride for dilation
DILATE_STAGES = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). Dilation is allowed, unlike torchvision, so that tiny
  test models can run at output stride 8/16."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name, y: BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=name)(y, train)
    out = conv(self.planes, 3, self.stride, self.dilation, dtype=self.dtype,
               atrous_impl=self.atrous_impl, name="conv1")(x)
    out = nn.relu(bn("bn1", out))
    out = conv(self.planes, 3, 1, self.dilation, dtype=self.dtype,
               atrous_impl=self.atrous_impl, name="conv2")(out)
    out = bn("bn2", out)
    if self.downsample:
      x = conv(self.planes, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
      x = bn("downsample_bn", x)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """1x1 - 3x3 (stride, dilation) - 1x1 bottleneck, stride on the 3x3 (ResNet v1.5)."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name, y: BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=name)(y, train)
    out = conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(bn("bn1", out))
    out = conv(self.planes, 3, self.stride, self.dilation, dtype=self.dtype,
               atrous_impl=self.atrous_impl, name="conv2")(out)
    out = nn.relu(bn("bn2", out))
    out = conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(out)
    out = bn("bn3", out)
    if self.downsample:
      x = conv(self.planes * 4, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
      x = bn("downsample_bn", x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """ResNet returning (stage-1 features at stride 4, last-stage features).

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    deep_stem: the 3x(3x3 conv) stem of the segmentation literature; False gives
      torchvision's 7x7 stem.
    width: multiplier on every channel count (1.0 is the real model).
    output_stride: 8, 16 or 32.
    multi_grid: () for none, else one factor per block of the last stage.
    axis_name: device axis over which BatchNorm statistics are synchronised in training.
    dtype: compute dtype; parameters stay float32.
    atrous_impl: how the dilated stages compute their 3x3 convolutions
      (`layers.ATROUS_IMPLS`; the same parameters and outputs for each).
  """
  depth: int = 101
  deep_stem: bool = True
  width: float = 1.0
  output_stride: int = 16
  multi_grid: Tuple[int, ...] = ()
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool, with_layer3: bool = False):
    """(stage-1 features, last-stage features); with `with_layer3`, (stage-1, stage-3,
    last-stage) features (stage 3 feeds an auxiliary head)."""
    if self.depth not in RESNET_LAYOUTS:
      raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {self.depth}.")
    if self.output_stride not in DILATE_STAGES:
      raise ValueError(f"output_stride must be one of {sorted(DILATE_STAGES)}, "
                       f"got {self.output_stride}.")
    bottleneck, layout = RESNET_LAYOUTS[self.depth]
    if self.multi_grid and len(self.multi_grid) != layout[3]:
      raise ValueError(f"multi_grid needs one factor per block of the last stage "
                       f"({layout[3]} for ResNet-{self.depth}), got {tuple(self.multi_grid)}.")
    block_cls = Bottleneck if bottleneck else BasicBlock
    bn = lambda name, y: BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=name)(y, train)
    w = lambda c: scaled(c, self.width)

    x = x.astype(self.dtype)
    if self.deep_stem:
      x = nn.relu(bn("stem_bn1", conv(w(64), 3, 2, dtype=self.dtype, name="stem_conv1")(x)))
      x = nn.relu(bn("stem_bn2", conv(w(64), 3, 1, dtype=self.dtype, name="stem_conv2")(x)))
      x = conv(w(128), 3, 1, dtype=self.dtype, name="stem_conv3")(x)
      in_planes = w(128)
    else:
      x = conv(w(64), 7, 2, dtype=self.dtype, name="conv1")(x)
      in_planes = w(64)
    x = nn.relu(bn("bn1", x))
    x = max_pool(x, 3, 2, 1, ceil_mode=self.deep_stem)

    dilate = (False,) + DILATE_STAGES[self.output_stride]
    dilation = 1
    low_level = layer3 = None
    for stage, (num_blocks, planes) in enumerate(zip(layout, (64, 128, 256, 512))):
      stride = 1 if stage == 0 else 2
      previous_dilation = dilation
      if dilate[stage]:
        dilation *= stride
        stride = 1
      planes = w(planes)
      grid = tuple(self.multi_grid) if stage == 3 and self.multi_grid else (1,) * num_blocks
      for i in range(num_blocks):
        x = block_cls(
            planes=planes,
            stride=stride if i == 0 else 1,
            dilation=(previous_dilation if i == 0 else dilation) * grid[i],
            downsample=(i == 0 and (stride != 1 or in_planes != planes * block_cls.expansion)),
            axis_name=self.axis_name,
            dtype=self.dtype,
            atrous_impl=self.atrous_impl,
            name=f"layer{stage + 1}_{i}",
        )(x, train)
        in_planes = planes * block_cls.expansion
      if stage == 0:
        low_level = x
      if stage == 2:
        layer3 = x
    return (low_level, layer3, x) if with_layer3 else (low_level, x)

