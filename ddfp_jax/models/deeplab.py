"""DeepLabV3+ with the release's classifier block (NHWC, Flax linen).

The model exposes the stages that the DDFP step composes:

    u = model.apply(variables, x, train, method="encode")       # image -> classifier input
    v = model.apply(variables, u, train, perturbed, method="features")  # u -> pixel features
    logits = model.apply(variables, v, method="classify")       # v -> logits (stride 4)
    logits = model.apply(variables, x, train)                   # image -> logits (stride 4)

Options other methods use: `projection_dim` > 0 adds a per-pixel projection head,

    rep = model.apply(variables, v, train, method="project")    # v -> projections (DGCL)
    rep = model.apply(variables, u, train, method="project")    # u -> representations (CSS)

reading v with `projection_on="features"` (DGCL: 1x1 conv with bias, BatchNorm over all
pixels of the batch, ReLU, 1x1 conv with bias, the release's Linear-BatchNorm1d-ReLU-Linear
applied to each pixel) or u with `projection_on="decoder_input"` (CSS's representation
head, parallel to the classifier: 3x3 conv to 256 channels, BN, ReLU, 1x1 conv with
bias);
`decoder="reco"` is the ReCo-style decoder CSS uses: a 1x1 projection of the ASPP
concatenation instead of the 3x3, a classifier block of one 3x3 conv (no bias) instead of
two, with `dropout_rate=0` no dropout anywhere; `aux_head` adds an
auxiliary classifier on the backbone's stage 3,

    u, aux_logits = model.apply(variables, x, train, method="encode_with_aux")

(3x3 conv with bias, BN, ReLU, Dropout2d, 1x1 conv: logits at stride 16 or 8); and
`mixed_bn=False` gives the classifier block plain BatchNorms (no auxiliary set).

`u` is the 304-channel concatenation [low-level (48), upsampled ASPP head (256)] at stride
4; `v` is the 256-channel output of the two-conv classifier block, the feature whose density
the flow learns. The classifier block's BatchNorms are mixed: `perturbed=True` routes
through their auxiliary parameters and statistics. Logits come out in float32 whatever the
compute dtype, so losses and softmax confidences are computed in full precision.
"""
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ddfp_jax.models.layers import BatchNorm, MixedBatchNorm, conv, dropout2d, scaled
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.models.resnet import ResNet

Dtype = Any
DECODERS = ("ddfp", "reco")
PROJECTION_INPUTS = ("features", "decoder_input")


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: image pooling, 1x1, and three dilated 3x3 branches."""
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    def branch(y, kernel, dilation, name):
      y = conv(self.features, kernel, 1, dilation, dtype=self.dtype,
               atrous_impl=self.atrous_impl, name=f"{name}_conv")(y)
      y = BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=f"{name}_bn")(y, train)
      return nn.relu(y)

    height, width = x.shape[1:3]
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    outputs = [resize_bilinear(branch(pooled, 1, 1, "pool"), (height, width)),
               branch(x, 1, 1, "conv1x1")]
    for i, rate in enumerate(self.rates):
      outputs.append(branch(x, 3, rate, f"atrous{i + 1}"))
    return jnp.concatenate(outputs, axis=-1)


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ on a ResNet, with the DDFP classifier block.

  Attributes:
    num_classes: output classes (21 VOC, 19 Cityscapes).
    depth, deep_stem, output_stride: backbone (see `ResNet`).
    width: channel multiplier for backbone *and* decoder (1.0 is the real model; tests use
      small values).
    aspp_rates: ASPP dilations at output stride 16 (6, 12, 18).
    atrous_impl: how ASPP and the backbone's dilated stages compute their dilated
      convolutions (`layers.ATROUS_IMPLS`).
    multi_grid: the last backbone stage's dilation grid (`ResNet.multi_grid`).
    mixed_bn: the classifier block's BatchNorms carry DDFP's auxiliary set.
    decoder: "ddfp" (the release's: 3x3 ASPP projection, two-conv classifier block) or
      "reco" (1x1 ASPP projection, one-conv classifier block; CSS).
    projection_dim: width of the projection head (0: none).
    projection_on: what the projection head reads: "features" (v, DGCL) or
      "decoder_input" (u, CSS's representation head).
    aux_head: an auxiliary classifier on backbone stage 3.
    dropout_rate: Dropout2d rate in the head and the classifier block.
    axis_name: device axis for cross-replica BatchNorm in training (None: local BN).
    dtype: compute dtype (bfloat16 or float32); parameters are always float32.
  """
  num_classes: int
  depth: int = 101
  deep_stem: bool = True
  output_stride: int = 16
  width: float = 1.0
  aspp_rates: Sequence[int] = (6, 12, 18)
  atrous_impl: str = "dilated"
  multi_grid: Tuple[int, ...] = ()
  mixed_bn: bool = True
  decoder: str = "ddfp"
  projection_dim: int = 0
  projection_on: str = "features"
  aux_head: bool = False
  dropout_rate: float = 0.1
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.decoder not in DECODERS:
      raise ValueError(f"model.decoder must be one of {DECODERS}, got {self.decoder!r}.")
    if self.projection_on not in PROJECTION_INPUTS:
      raise ValueError(f"model.projection_on must be one of {PROJECTION_INPUTS}, got "
                       f"{self.projection_on!r}.")
    reco = self.decoder == "reco"
    w = lambda c: scaled(c, self.width)
    bn = lambda name: BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name=name)
    block_bn = MixedBatchNorm if self.mixed_bn else BatchNorm
    mixed_bn = lambda name: block_bn(axis_name=self.axis_name, dtype=self.dtype, name=name)
    self.backbone = ResNet(depth=self.depth, deep_stem=self.deep_stem, width=self.width,
                           output_stride=self.output_stride,
                           multi_grid=tuple(self.multi_grid), axis_name=self.axis_name,
                           dtype=self.dtype, atrous_impl=self.atrous_impl)
    self.aspp = ASPP(features=w(256), rates=tuple(self.aspp_rates), axis_name=self.axis_name,
                     dtype=self.dtype, atrous_impl=self.atrous_impl)
    self.head_conv = conv(w(256), 1 if reco else 3, dtype=self.dtype)
    self.head_bn = bn("head_bn")
    self.low_conv = conv(w(48), 1, use_bias=not reco, dtype=self.dtype)
    self.low_bn = bn("low_bn")
    # (conv, BN) pairs of the classifier block: u -> v.
    self.classifier = tuple(
        (conv(w(256), 3, use_bias=not reco, dtype=self.dtype, name=f"classifier_conv{i}"),
         mixed_bn(f"classifier_bn{i}")) for i in range(1, 2 if reco else 3))
    self.final = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype)
    self.dropout = dropout2d(self.dropout_rate)
    if self.projection_dim:
      # A bias before BatchNorm changes nothing; kept on the 1x1 for DGCL's weights.
      # CSS's head: 3x3, 256 hidden channels; DGCL's: 1x1 as wide as its output.
      on_u = self.projection_on == "decoder_input"
      self.projection_conv1 = conv(w(256) if on_u else self.projection_dim, 3 if on_u else 1,
                                   use_bias=not on_u, dtype=self.dtype)
      self.projection_bn = bn("projection_bn")
      self.projection_conv2 = conv(self.projection_dim, 1, use_bias=True, dtype=self.dtype)
    if self.aux_head:
      self.aux_conv = conv(w(256), 3, use_bias=True, dtype=self.dtype)
      self.aux_bn = bn("aux_bn")
      self.aux_final = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype)

  def encode(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Image (N, H, W, 3) -> classifier input u (N, H/4, W/4, 304)."""
    return self.head(*self.backbone(x, train), train)

  def encode_with_aux(self, x: jnp.ndarray, train: bool):
    """Image -> (u, float32 logits of the auxiliary head on backbone stage 3)."""
    if not self.aux_head:
      raise ValueError("encode_with_aux needs a model built with aux_head=True.")
    low, layer3, high = self.backbone(x, train, with_layer3=True)
    aux = nn.relu(self.aux_bn(self.aux_conv(layer3), train))
    aux = self.dropout(aux, deterministic=not train)
    return self.head(low, high, train), self.aux_final(aux).astype(jnp.float32)

  def project(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """v (or u, `projection_on`) -> projections (N, h, w, projection_dim), float32."""
    if not self.projection_dim:
      raise ValueError("project needs a model built with projection_dim > 0.")
    r = nn.relu(self.projection_bn(self.projection_conv1(x.astype(self.dtype)), train))
    return self.projection_conv2(r).astype(jnp.float32)

  def head(self, low: jnp.ndarray, high: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Backbone outputs (stride 4 and stride 16) -> classifier input u: ASPP, its
    projection, the low-level projection, upsampling and concatenation."""
    head = self.aspp(high, train)
    head = nn.relu(self.head_bn(self.head_conv(head), train))
    head = self.dropout(head, deterministic=not train)
    low = nn.relu(self.low_bn(self.low_conv(low), train))
    head = resize_bilinear(head, low.shape[1:3])
    return jnp.concatenate([low, head], axis=-1)

  def features(self, u: jnp.ndarray, train: bool, perturbed: bool = False) -> jnp.ndarray:
    """Classifier block: u -> pixel features v (N, h, w, 256).

    `perturbed` selects the auxiliary BatchNorm parameters and statistics.
    """
    if perturbed and not self.mixed_bn:
      raise ValueError("perturbed=True needs the auxiliary BatchNorms (mixed_bn=True).")
    v = u.astype(self.dtype)
    for conv_layer, bn_layer in self.classifier:
      v = bn_layer(conv_layer(v), train, perturbed) if self.mixed_bn else bn_layer(
          conv_layer(v), train)
      v = self.dropout(nn.relu(v), deterministic=not train)
    return v

  def classify(self, v: jnp.ndarray) -> jnp.ndarray:
    """Pixel features v -> float32 logits at the same resolution."""
    return self.final(v.astype(self.dtype)).astype(jnp.float32)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Image -> float32 logits at stride 4 (129 x 129 for a 513 x 513 input)."""
    if self.is_initializing() and self.aux_head:   # create the extra heads' parameters
      u = self.encode_with_aux(x, train)[0]
    else:
      u = self.encode(x, train)
    v = self.features(u, train)
    if self.is_initializing() and self.projection_dim:
      self.project(u if self.projection_on == "decoder_input" else v, train)
    return self.classify(v)
