"""Building blocks shared by the backbone and the decoder (NHWC, Flax linen).

Conventions that matter for parity with the PyTorch release:
- Convolutions use explicit symmetric padding (`dilation * (k // 2)`), as PyTorch does;
  Flax's "SAME" pads asymmetrically for stride 2 on even inputs and would shift features.
- BatchNorm: PyTorch momentum 0.1 is Flax momentum 0.9; epsilon 1e-5; the variance is
  computed as mean((x - mean)^2) rather than E[x^2] - E[x]^2 (`use_fast_variance=False`),
  which is what PyTorch does and is robust in low precision. With `axis_name` set, the
  statistics are averaged over that device axis (SyncBatchNorm). One difference remains:
  PyTorch updates the running variance with the unbiased batch variance (n / (n - 1));
  Flax uses the biased one. For n = 4 x 129 x 129 pixels the factor is 1 + 1.5e-5.
- Parameters are float32; `dtype` is the compute dtype (bfloat16 or float32). Flax
  BatchNorm reduces its statistics in float32 whatever the compute dtype.
"""
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# How `Conv` computes a dilated kernel; all give the same result from the same parameters.
# "dilated": one convolution with a dilated kernel (XLA's rhs_dilation), which XLA:GPU
# legalises by materialising the zero-inserted kernel (a 3 x 3 kernel at rate 18 becomes
# 37 x 37); "space_to_batch": an undilated convolution of the input's polyphase
# components (`space_to_batch_conv`); "shifted": the k x k taps as matrix products of
# shifted windows of the input, accumulated (`shifted_taps_conv`): no convolution at all,
# forward or backward. The last two hold no dilated kernel on any backend (tests read the
# compiled HLO). `python -m benchmarks.model --benchmarks
# aspp,aspp_space_to_batch,aspp_shifted,aspp_undilated` says which is fastest on a device.
ATROUS_IMPLS = ("dilated", "space_to_batch", "shifted")

# Kaiming-normal, fan_out, ReLU gain: the release's initialisation of every conv.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
  """Bias-optional 2-D convolution (NHWC, HWIO kernel) with PyTorch's symmetric padding
  `dilation * (k // 2)`. The parameters are those of `nn.Conv` (`kernel`, `bias`, float32),
  so checkpoints and converted weights are interchangeable with it.

  A 1 x 1 kernel is computed as a matrix product over the channels (after the stride's
  subsampling), not as a convolution. Same numbers, but XLA:CPU lowers the weight gradient
  of a 1 x 1 convolution as a generic convolution over the whole image plus two
  activation-sized transposes, while the product's gradients are plain GEMMs; the ResNet's
  bottlenecks are half 1 x 1 convolutions, and the model's forward + backward on a CPU is
  about 20 % faster for it (docs/speed.md). On GPUs and TPUs both forms are matrix-unit
  work (not measured there yet).

  `atrous_impl="space_to_batch"` or `"shifted"` computes a dilated stride-1 kernel by
  `space_to_batch_conv` or `shifted_taps_conv` instead of a convolution with a dilated
  kernel (same numbers, same parameters).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  atrous_impl: str = "dilated"
  kernel_init: Callable = conv_kernel_init

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.atrous_impl not in ATROUS_IMPLS:
      raise ValueError(f"model.atrous_impl must be one of {ATROUS_IMPLS}, got "
                       f"{self.atrous_impl!r}.")
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if k == 1:
      y = pointwise_conv(x, kernel, self.stride)
    elif self.dilation > 1 and self.atrous_impl != "dilated":
      if self.stride != 1:
        raise ValueError(f"atrous_impl {self.atrous_impl!r} computes stride-1 dilated "
                         "convolutions only.")
      form = space_to_batch_conv if self.atrous_impl == "space_to_batch" else shifted_taps_conv
      y = form(x, kernel, self.dilation)
    else:
      pad = self.dilation * (k // 2)
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
          rhs_dilation=(self.dilation, self.dilation),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def pointwise_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1) -> jnp.ndarray:
  """A 1 x 1 convolution without padding: (N, H, W, C) x (1, 1, C, F) -> (N, H', W', F),
  as a product over C. Stride s keeps the pixels 0, s, 2s, ... (output size ceil(H / s)),
  as the convolution does."""
  if stride > 1:
    x = x[:, ::stride, ::stride]
  return jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))


def conv(features: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
         use_bias: bool = False, dtype: Dtype = jnp.float32, atrous_impl: str = "dilated",
         name: Optional[str] = None) -> Conv:
  """2-D convolution with PyTorch's symmetric padding and float32 parameters (`Conv`)."""
  return Conv(features, kernel_size, stride, dilation, use_bias, dtype, atrous_impl,
              name=name)


def space_to_batch_conv(x: jnp.ndarray, kernel: jnp.ndarray, rate: int) -> jnp.ndarray:
  """Stride-1 dilated convolution with zero padding `rate * (k // 2)` (as `conv`), computed
  as an undilated VALID convolution of the rate x rate polyphase components of the input.

  Output pixel i = q * rate + p only reads input pixels p + rate * m, so the dilated conv
  of x equals, component by component, the plain conv of x[p::rate] (after padding H and
  W to a multiple of `rate`). The components are stacked on the batch axis: one dense
  convolution, no zero-inserted kernel (TensorFlow's `atrous_conv2d` does the same).

  Args:
    x: (N, H, W, C) input.
    kernel: (k, k, C, F) HWIO kernel, k odd.
    rate: the dilation.

  Returns:
    (N, H, W, F), equal to the dilated convolution.
  """
  n, h, w, c = x.shape
  k = kernel.shape[0]
  pad = rate * (k // 2)
  # Zero padding of the conv, then up to a multiple of `rate` at the far end.
  padded = jnp.pad(x, ((0, 0), (pad, pad + (-h) % rate), (pad, pad + (-w) % rate), (0, 0)))
  hb, wb = padded.shape[1] // rate, padded.shape[2] // rate
  phases = padded.reshape(n, hb, rate, wb, rate, c).transpose(2, 4, 0, 1, 3, 5)
  phases = phases.reshape(rate * rate * n, hb, wb, c)
  y = jax.lax.conv_general_dilated(phases, kernel, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ho, wo, f = y.shape[1:]
  y = y.reshape(rate, rate, n, ho, wo, f).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(n, ho * rate, wo * rate, f)[:, :h, :w]


def shifted_taps_conv(x: jnp.ndarray, kernel: jnp.ndarray, rate: int) -> jnp.ndarray:
  """Stride-1 dilated convolution with zero padding `rate * (k // 2)` (as `conv`), computed
  as the sum over the k x k taps of a matrix product: tap (i, j) multiplies the window of
  the padded input that starts at (i rate, j rate) by kernel[i, j] (C x F).

  Slices, pads and matrix products only: the gradients are the same (a slice's transpose
  is a pad), so neither pass holds a convolution, let alone a dilated kernel. The products
  are accumulated one tap at a time rather than over the k^2 windows concatenated on the
  channels, which would hold a k^2 C-channel copy of the input. A tap whose window lies
  wholly in the padding (rate >= the map's size) is zero and skipped. Arguments and
  result as `space_to_batch_conv`'s.
  """
  _, h, w, _ = x.shape
  k = kernel.shape[0]
  pad = rate * (k // 2)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def reads_the_input(tap, size):   # rows [tap rate, tap rate + size) meet [pad, pad + size)
    return tap * rate < pad + size and tap * rate + size > pad

  y = None
  for i in (i for i in range(k) if reads_the_input(i, h)):
    for j in (j for j in range(k) if reads_the_input(j, w)):
      window = jax.lax.slice_in_dim(
          jax.lax.slice_in_dim(padded, i * rate, i * rate + h, axis=1),
          j * rate, j * rate + w, axis=2)
      tap = pointwise_conv(window, kernel[i:i + 1, j:j + 1])
      y = tap if y is None else y + tap
  return y


class BatchNorm(nn.BatchNorm):
  """BatchNorm with the release's hyper-parameters (see the module docstring).

  Called as `bn(x, train)`. `axis_name` only matters in training: inference uses the
  running statistics and needs no communication.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_fast_variance: bool = False
  param_dtype: Dtype = jnp.float32

  def __call__(self, x, train: bool):  # pytype: disable=signature-mismatch
    return super().__call__(x, use_running_average=not train)


class MixedBatchNorm(nn.Module):
  """BatchNorm with a second, auxiliary set of parameters and statistics.

  Clean features use the main set, perturbed features the auxiliary one (the release's
  `MixSyncBatchNorm`): the perturbed features come from a different distribution, and
  mixing them into the main statistics would shift the clean predictions.
  """
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool, perturbed: bool = False) -> jnp.ndarray:
    main = BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name="main")
    aux = BatchNorm(axis_name=self.axis_name, dtype=self.dtype, name="aux")
    if self.is_initializing():
      # Both sets must exist in the variables whichever path `init` happens to trace.
      (main if perturbed else aux)(x, train)
    return aux(x, train) if perturbed else main(x, train)


def dropout2d(rate: float) -> nn.Dropout:
  """Dropout of whole channels (torch.nn.Dropout2d) for NHWC: one draw per (sample, channel).

  Call it as `drop(x, deterministic=not train)`; each call draws a fresh mask from the
  "dropout" RNG stream.
  """
  return nn.Dropout(rate, broadcast_dims=(1, 2))


def _ceil_pool_padding(size: int, kernel: int, stride: int, pad: int) -> Tuple[int, int]:
  """(low, high) padding that reproduces PyTorch's `ceil_mode=True` output size."""
  out = -(-(size + 2 * pad - kernel) // stride) + 1
  # PyTorch drops the last window if it would start inside the right padding.
  if (out - 1) * stride >= size + pad:
    out -= 1
  high = max((out - 1) * stride + kernel - size - pad, 0)
  return pad, high


def max_pool(x: jnp.ndarray, kernel: int = 3, stride: int = 2, pad: int = 1,
             ceil_mode: bool = False) -> jnp.ndarray:
  """Max pooling over H, W of an NHWC array with PyTorch's output-size rules."""
  pads = []
  for size in x.shape[1:3]:
    if ceil_mode:
      pads.append(_ceil_pool_padding(size, kernel, stride, pad))
    else:
      pads.append((pad, pad))
  # A Python-scalar -inf init lets JAX recognise a max-pool and differentiate it.
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max,
      window_dimensions=(1, kernel, kernel, 1),
      window_strides=(1, stride, stride, 1),
      padding=((0, 0), pads[0], pads[1], (0, 0)))


def scaled(channels: int, width: float) -> int:
  """Channel count under a width multiplier (tests run width 1/16 models)."""
  return max(1, int(np.round(channels * width)))

