"""USSS's model: one shared encoder, a segmentation head per domain, a pixel-embedding
head (the spec's ../shared usss-algorithm.md section 2; NHWC, Flax linen).

    f = model.apply(variables, x, train, method="encode")        # image -> shared features
    logits = model.apply(variables, f, d, method="classify")     # f -> domain d's logits
    e = model.apply(variables, f, method="embed")                # f -> pixel embeddings

Everything is at the encoder's stride (8 for DRN-D, 4 for the DeepLabV3+ alternative);
the caller upsamples the score maps it needs (the release's frozen bilinear x8
deconvolution is `resize.upsample_bilinear_deconv`, linear, so upsampling after the
1 x 1 heads equals the release's order).

Heads are 1 x 1 convolutions with bias: domain d's has K_d channels, or K_d + 1 with
`none_class` (the release's extra "None" channel, the target of no pixel: its ignore
index, so the softmax has one more class to push down). The embedding head maps to
`embedding_dim` channels, not normalised. Both are initialised as the release does:
weights N(0, 2 / n), n the output channels (kernel 1 x 1), biases 0.

Encoders (`encoder`): "drn", DRN-D (`drn.DRN`, 512 channels at stride 8, the release's);
"deeplab", the DeepLabV3+ / ResNet of the rest of the framework up to its pixel features
v (256 channels at stride 4: `DeepLabV3Plus.encode` then `.features`; its own classifier
is never called, so it has no parameters here).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.drn import DRN
from ddfp_jax.models.layers import Conv

Dtype = Any
ENCODERS = ("drn", "deeplab")


def release_head_init(features: int):
  """N(0, 2 / n) with n = k * k * out_channels = out_channels for a 1 x 1 kernel."""
  return nn.initializers.normal(stddev=(2.0 / features) ** 0.5)


class DeepLabFeatures(nn.Module):
  """DeepLabV3+ up to the pixel features v: the "deeplab" encoder."""
  model: DeepLabV3Plus

  def __call__(self, x, train: bool):
    return self.model.features(self.model.encode(x, train), train)


class MultiDomainSegmenter(nn.Module):
  """Shared encoder, one head per domain, an embedding head (module docstring).

  Attributes:
    encoder: the shared encoder, a module called as `encoder(x, train)` (a `drn.DRN` or
      a `DeepLabFeatures`; `builders.build_multi_domain_model` makes it from a config).
    num_classes: K_d of each domain, in the order the domains are numbered.
    embedding_dim: channels of the pixel embeddings (the release's `--em-dim`, 100).
    none_class: one more channel per head, the release's "None" label.
    dtype: compute dtype; parameters stay float32.
  """
  encoder: nn.Module
  num_classes: Sequence[int]
  embedding_dim: int = 100
  none_class: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    extra = 1 if self.none_class else 0
    self.heads = [Conv(k + extra, 1, use_bias=True, dtype=self.dtype, name=f"head_{d}",
                       kernel_init=release_head_init(k + extra))
                  for d, k in enumerate(self.num_classes)]
    self.embedding = Conv(self.embedding_dim, 1, use_bias=True, dtype=self.dtype,
                          kernel_init=release_head_init(self.embedding_dim))

  def encode(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Image (N, H, W, 3) -> shared features f at the encoder's stride."""
    return self.encoder(x, train)

  def classify(self, f: jnp.ndarray, domain: int) -> jnp.ndarray:
    """f -> float32 logits of domain `domain` (a Python int), K_d (+ 1) channels."""
    return self.heads[domain](f.astype(self.dtype)).astype(jnp.float32)

  def embed(self, f: jnp.ndarray) -> jnp.ndarray:
    """f -> float32 pixel embeddings (N, h, w, embedding_dim)."""
    return self.embedding(f.astype(self.dtype)).astype(jnp.float32)

  def __call__(self, x: jnp.ndarray, train: bool = False, domain: Optional[int] = None):
    """Image -> logits of `domain`; at initialisation every head and the embedding head
    are created."""
    f = self.encode(x, train)
    if self.is_initializing():
      for d in range(len(self.num_classes)):
        self.classify(f, d)
      self.embed(f)
    return self.classify(f, 0 if domain is None else domain)


def build_encoder(name: str, *, drn_depth: int = 22, width: float = 1.0,
                  deeplab: Optional[DeepLabV3Plus] = None, axis_name: Optional[str] = None,
                  dtype: Dtype = jnp.float32, atrous_impl: str = "dilated") -> nn.Module:
  """The shared encoder `name` ("drn" | "deeplab", module docstring); `atrous_impl` is
  the DRN's (the deeplab encoder's is its DeepLabV3Plus's own)."""
  if name == "drn":
    return DRN(depth=drn_depth, width=width, axis_name=axis_name, dtype=dtype,
               atrous_impl=atrous_impl)
  if name == "deeplab":
    if deeplab is None:
      raise ValueError("the deeplab encoder needs its DeepLabV3Plus")
    return DeepLabFeatures(deeplab)
  raise ValueError(f"the USSS encoder must be one of {ENCODERS}, got {name!r}")
