"""Resizing with PyTorch's conventions, on NHWC arrays.

The release resizes logits and decoder features with
`F.interpolate(mode="bilinear", align_corners=True)` and labels with `mode="nearest"`.
`jax.image.resize` samples at half-pixel centres (align_corners=False), which shifts every
pixel by up to half a source pixel: fine for images, but it breaks numerical parity with
the release and moves pseudo labels. These functions reproduce PyTorch's index arithmetic.

Both ops are separable and use gathers with *static* indices and weights computed in NumPy
at trace time, so they cost two cheap gathers plus a lerp, and are exact in float32 on
every backend (a matmul formulation would depend on the backend's matmul precision).
"""
from typing import Sequence, Tuple

import jax.numpy as jnp
import numpy as np


def _align_corners_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (lo, hi) and weights of hi for align_corners=True bilinear resize."""
  if out_size > 1:
    scale = np.float32((in_size - 1) / (out_size - 1))
  else:
    scale = np.float32(0.0)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  return lo, hi, frac


def resize_bilinear(x: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """Bilinear resize of `x` (N, H, W, C) to `size` = (h, w), align_corners=True.

  Matches `torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=True)`.
  Differentiable in `x`; keeps `x.dtype`.
  """
  out_h, out_w = int(size[0]), int(size[1])
  for axis, out_size in ((1, out_h), (2, out_w)):
    in_size = x.shape[axis]
    if in_size == out_size:
      continue
    lo, hi, frac = _align_corners_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w = jnp.asarray(frac.reshape(shape), dtype=x.dtype)
    x_lo = jnp.take(x, lo, axis=axis)
    x_hi = jnp.take(x, hi, axis=axis)
    x = x_lo + (x_hi - x_lo) * w
  return x


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's legacy `mode="nearest"` source index: floor(dst * in / out)."""
  scale = np.float32(in_size / out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(src, in_size - 1)


def resize_nearest(x: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """Nearest resize of `x` (N, H, W[, C]) to (h, w), as PyTorch's `mode="nearest"`.

  Used to bring label maps to the feature grid; works on integer arrays.
  """
  for axis, out_size in ((1, int(size[0])), (2, int(size[1]))):
    if x.shape[axis] != out_size:
      x = jnp.take(x, _nearest_indices(x.shape[axis], out_size), axis=axis)
  return x


def bilinear_taps(factor: int) -> np.ndarray:
  """FCN's bilinear filler along one axis of a kernel of 2 `factor` taps:
  k(t) = 1 - |t / s - c|, c = (2s - 1 - s % 2) / (2s), s = factor (the USSS release's
  `fill_up_weights`; a 2-D kernel is the outer product)."""
  s = factor
  center = (2 * s - 1 - s % 2) / (2 * s)
  return (1.0 - np.abs(np.arange(2 * s) / s - center)).astype(np.float32)


def _deconv_taps(in_size: int, factor: int) -> Tuple[np.ndarray, np.ndarray]:
  """(source indices (out, 2), weights (out, 2)) of `upsample_bilinear_deconv` on one axis.

  The transposed convolution with stride s, kernel 2s and padding s // 2 writes input i
  onto outputs o = i s - s // 2 + t, t = 0 .. 2s - 1, with weight k(t) = 1 - |t / s - c|,
  c = (2s - 1 - s % 2) / (2s) (FCN's bilinear filler). Every output has two sources; one
  that falls outside the input contributes 0, as the zero padding does."""
  s, pad = factor, factor // 2
  out = np.arange((in_size - 1) * s - 2 * pad + 2 * s)
  first = (out + pad) // s                       # the largest i with t = o + pad - i s >= 0
  index = np.stack([first - 1, first], axis=1)
  t = out[:, None] + pad - index * s
  weight = np.where((index >= 0) & (index < in_size) & (t >= 0) & (t < 2 * s),
                    bilinear_taps(s)[np.clip(t, 0, 2 * s - 1)], 0.0).astype(np.float32)
  return np.clip(index, 0, in_size - 1).astype(np.int32), weight


def upsample_bilinear_deconv(x: jnp.ndarray, factor: int = 8) -> jnp.ndarray:
  """x (N, H, W, C) upsampled by `factor` as a frozen bilinear transposed convolution,
  one channel at a time: PyTorch's `ConvTranspose2d(C, C, 2 factor, stride=factor,
  padding=factor // 2, groups=C, bias=False)` with FCN's bilinear weights (the USSS
  release's x8 upsampling of its score and embedding maps). Output (N, factor H, factor
  W, C) for an even factor. Linear in x, like `resize_bilinear`, and differs from it at
  the borders (the zero padding) and by its half-pixel alignment."""
  for axis in (1, 2):
    index, weight = _deconv_taps(x.shape[axis], factor)
    shape = [1] * x.ndim
    shape[axis] = index.shape[0]
    w0 = jnp.asarray(weight[:, 0].reshape(shape), x.dtype)
    w1 = jnp.asarray(weight[:, 1].reshape(shape), x.dtype)
    x = jnp.take(x, index[:, 0], axis=axis) * w0 + jnp.take(x, index[:, 1], axis=axis) * w1
  return x
