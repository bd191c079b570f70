"""A strong view built on the device from the weak one after the teacher has labelled it
(CSS / ReCo): random rescale and crop, CutMix, then per image colour jitter, Gaussian
blur and horizontal flip, applied alike to the image and to every per-pixel map that
goes with it (pseudo labels, confidences, the padding mask).

The release does this with a PIL round trip per image; here it is part of the compiled
step, with static shapes, so nothing leaves the device:

* rescale and crop: image b is resized by s_b ~ U(scale_range) to (floor(H s), floor(W s))
  and a crop of the original size taken at a random offset; where the resized image is
  smaller than the crop the view is padded at the bottom and right (image 0 = the
  normalisation mean, maps their `fill`). The image is sampled bilinearly (half-pixel
  centres, as PIL and `jax.image.resize`, without PIL's antialiasing when shrinking),
  the maps by nearest neighbour (source index floor((i + 0.5) / s), PIL's rule);
* CutMix (`cutmix.cutmix_boxes`) with probability `cutmix_prob` (CSS: 1), the box taken
  from the next image of this device's batch (the release takes it from the batch
  gathered over GPUs, but from index (i + 1) mod the per-GPU size: from rank 0's images);
* colour jitter with probability `color_prob`, torchvision ColorJitter's semantics
  (brightness, contrast, saturation factors uniform in [1 - b, 1 + b], hue shift in
  [-h, h], the four in a random order, values clipped after each), on the 0..1 image;
* Gaussian blur with probability `blur_prob`, sigma ~ U(blur_sigma), symmetric padding,
  a fixed kernel of 2 ceil(3 max sigma) + 1 taps (PIL's GaussianBlur approximates the same
  Gaussian with box filters);
* horizontal flip with probability `flip_prob`.
"""
import math
from typing import Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from ddfp_jax.training.cutmix import cutmix_boxes

Array = jax.Array
# ITU-R 601-2 luma, torchvision's rgb_to_grayscale (as data/augment.py).
LUMA = (0.2989, 0.587, 0.114)


class StrongViewConfig(NamedTuple):
  scale_range: Tuple[float, float] = (0.5, 1.5)
  cutmix_prob: float = 1.0
  color_prob: float = 0.8
  brightness: float = 0.25
  contrast: float = 0.25
  saturation: float = 0.25
  hue: float = 0.25
  blur_prob: float = 0.5
  blur_sigma: Tuple[float, float] = (0.15, 1.15)
  flip_prob: float = 0.5
  mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)   # 0..255 RGB
  std: Tuple[float, float, float] = (58.395, 57.12, 57.375)


# --- rescale and crop -----------------------------------------------------------------


def rescale_crop_indices(scale: Array, offset: Array, size: int, bilinear: bool):
  """Source coordinates of one axis of a crop of `size` at `offset` of the image
  resized by `scale`: (low index, high index, weight of high, inside) for bilinear,
  (index, inside) for nearest. `inside` is False on the padding."""
  new = jnp.floor(size * scale).astype(jnp.int32)
  a = jnp.arange(size) + offset                       # index in the resized image
  inside = a < new
  ratio = size / new.astype(jnp.float32)
  if not bilinear:
    index = jnp.floor((a + 0.5) * ratio).astype(jnp.int32)
    return jnp.clip(index, 0, size - 1), inside
  src = jnp.clip((a + 0.5) * ratio - 0.5, 0.0, size - 1.0)
  low = jnp.floor(src).astype(jnp.int32)
  high = jnp.minimum(low + 1, size - 1)
  return low, high, src - low, inside


def rescale_crop(image: Array, maps: Dict[str, Array], fill: Dict[str, float],
                 scale: Array, offset: Tuple[Array, Array]):
  """One image (H, W, C) and its maps (H, W) resized by `scale` and cropped at
  `offset` = (row, column) to (H, W) (module docstring)."""
  h, w = image.shape[:2]
  y0, y1, wy, in_y = rescale_crop_indices(scale, offset[0], h, True)
  x0, x1, wx, in_x = rescale_crop_indices(scale, offset[1], w, True)
  rows = lambda i: jnp.take(image, i, axis=0)
  top = rows(y0) * (1 - wy)[:, None, None] + rows(y1) * wy[:, None, None]
  cols = lambda i: jnp.take(top, i, axis=1)
  out = cols(x0) * (1 - wx)[None, :, None] + cols(x1) * wx[None, :, None]
  inside = in_y[:, None] & in_x[None, :]
  out = jnp.where(inside[..., None], out, 0.0).astype(image.dtype)
  ny, _ = rescale_crop_indices(scale, offset[0], h, False)
  nx, _ = rescale_crop_indices(scale, offset[1], w, False)
  sampled = {k: jnp.where(inside, m[ny][:, nx], jnp.asarray(fill[k], m.dtype))
             for k, m in maps.items()}
  return out, sampled


def random_rescale_crop(key: Array, image: Array, maps, fill, scale_range):
  """`rescale_crop` of every image of the batch with its own scale and offset."""
  b, h, w = image.shape[:3]
  k_scale, k_y, k_x = jax.random.split(key, 3)
  scale = jax.random.uniform(k_scale, (b,), minval=scale_range[0], maxval=scale_range[1])
  room = lambda size: jnp.maximum(jnp.floor(size * scale).astype(jnp.int32) - size, 0)
  # Offsets uniform over the room the resized image leaves (0 when it is smaller).
  oy = jnp.floor(jax.random.uniform(k_y, (b,)) * (room(h) + 1)).astype(jnp.int32)
  ox = jnp.floor(jax.random.uniform(k_x, (b,)) * (room(w) + 1)).astype(jnp.int32)
  one = lambda x, m, s, y, xo: rescale_crop(x, m, fill, s, (y, xo))
  return jax.vmap(one)(image, maps, scale, oy, ox)


# --- colour ---------------------------------------------------------------------------


def grayscale(x: Array) -> Array:
  """(..., 1) luma of (..., 3) RGB."""
  return jnp.sum(x * jnp.asarray(LUMA, x.dtype), axis=-1, keepdims=True)


def _blend(x, y, factor):
  return jnp.clip(factor * x + (1.0 - factor) * y, 0.0, 1.0)


def rgb_to_hsv(x: Array) -> Array:
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
  chroma = maxc - minc
  s = chroma / jnp.where(maxc == 0, 1.0, maxc)
  div = jnp.where(chroma == 0, 1.0, chroma)
  rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
  hr = jnp.where(maxc == r, bc - gc, 0.0)
  hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
  hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
  h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: Array) -> Array:
  h, s, v = x[..., 0], x[..., 1], x[..., 2]
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = jnp.mod(i.astype(jnp.int32), 6)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  cases = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
  sector = [i == k for k in range(6)]
  return jnp.stack([jnp.select(sector, [c[ch] for c in cases]) for ch in range(3)], -1)


def adjust_hue(x: Array, shift) -> Array:
  hsv = rgb_to_hsv(x)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
  return hsv_to_rgb(hsv)


def jitter(x: Array, factors: Array, order: Array) -> Array:
  """The four ColorJitter adjustments of one 0..1 image (H, W, 3): factors =
  (brightness, contrast, saturation, hue shift), applied in `order` (a permutation)."""
  adjustments = (
      lambda y: jnp.clip(y * factors[0], 0.0, 1.0),
      lambda y: _blend(y, jnp.mean(grayscale(y)), factors[1]),
      lambda y: _blend(y, grayscale(y), factors[2]),
      lambda y: adjust_hue(y, factors[3]),
  )
  for i in range(4):
    x = jax.lax.switch(order[i], adjustments, x)
  return x


def gaussian_blur(x: Array, sigma, max_sigma: float) -> Array:
  """Separable Gaussian blur of one image (H, W, C), symmetric padding, fixed taps."""
  radius = max(1, int(math.ceil(3.0 * max_sigma)))
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps / sigma) ** 2)
  kernel = kernel / jnp.sum(kernel)
  h, w = x.shape[:2]
  padded = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
  rows = sum(kernel[t] * padded[t:t + h] for t in range(2 * radius + 1))
  return sum(kernel[t] * rows[:, t:t + w] for t in range(2 * radius + 1))


# --- the whole view -------------------------------------------------------------------


def strong_view(key: Array, image: Array, maps: Dict[str, Array], fill: Dict[str, float],
                config: StrongViewConfig):
  """(image, maps) of the strong view of a normalised batch (B, H, W, 3) and its maps
  (B, H, W) (module docstring); `fill[name]` is map `name`'s value on padding."""
  k_crop, k_coin, k_box, k_color, k_blur, k_flip = jax.random.split(key, 6)
  image, maps = random_rescale_crop(k_crop, image, maps, fill, config.scale_range)

  b, h, w = image.shape[:3]
  box = cutmix_boxes(k_box, b, h, w) & jax.random.bernoulli(k_coin, config.cutmix_prob)
  mix = lambda x: jnp.where(box.reshape(box.shape + (1,) * (x.ndim - 3)),
                            jnp.roll(x, -1, axis=0), x)
  image, maps = mix(image), {k: mix(m) for k, m in maps.items()}

  mean, std = jnp.asarray(config.mean), jnp.asarray(config.std)
  x = (image.astype(jnp.float32) * std + mean) / 255.0
  keys = jax.random.split(k_color, 4)
  apply_color = jax.random.uniform(keys[0], (b,)) < config.color_prob
  lows = jnp.asarray([max(0.0, 1 - config.brightness), max(0.0, 1 - config.contrast),
                      max(0.0, 1 - config.saturation), -config.hue])
  highs = jnp.asarray([1 + config.brightness, 1 + config.contrast, 1 + config.saturation,
                       config.hue])
  factors = jax.random.uniform(keys[1], (b, 4), minval=lows, maxval=highs)
  order = jnp.argsort(jax.random.uniform(keys[2], (b, 4)), axis=-1)
  jittered = jax.vmap(jitter)(x, factors, order)
  x = jnp.where(apply_color[:, None, None, None], jittered, x)

  k_blur_p, k_sigma = jax.random.split(k_blur)
  apply_blur = jax.random.uniform(k_blur_p, (b,)) < config.blur_prob
  sigma = jax.random.uniform(k_sigma, (b,), minval=config.blur_sigma[0],
                             maxval=config.blur_sigma[1])
  blurred = jax.vmap(lambda y, s: gaussian_blur(y, s, config.blur_sigma[1]))(x, sigma)
  x = jnp.where(apply_blur[:, None, None, None], blurred, x)
  image = ((x * 255.0 - mean) / std).astype(image.dtype)

  flip = jax.random.uniform(k_flip, (b,)) < config.flip_prob
  flipped = lambda y: jnp.where(flip.reshape((b,) + (1,) * (y.ndim - 1)), y[:, :, ::-1], y)
  return flipped(image), {k: flipped(m) for k, m in maps.items()}
