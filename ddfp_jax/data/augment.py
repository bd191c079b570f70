"""Image augmentation as pure TensorFlow functions of (inputs, seed).

Every op draws its randomness from `tf.random.stateless_*` with a shape-[2] integer seed,
so the same seed gives the same output eagerly and inside `tf.data.Dataset.map`, whatever
the order in which parallel workers run. Ops that need several random numbers split their
seed with `tf.random.experimental.stateless_split`.

Images are RGB on the 0..255 scale; the geometric ops accept uint8 or float and return
float32 (resizing produces fractional values, which are kept rather than re-quantised as
PIL would). Labels and ignore masks are uint8 (H, W). Geometric ops take an optional
`ignore` mask and return `(image, label, ignore)`, `ignore` being None when none was given.

Weak augmentation (both streams), as in the release: random rescale of the long side,
crop with padding (image 0, label and ignore 255) to the bottom and right, horizontal
flip. The unlabeled stream passes a zero map as its `label`; after cropping it is the
ignore mask (255 on padding).

Validation (VOC): `center_crop_and_pad`, the release's centred padding and crop.

Strong augmentation (unlabeled stream, on the weak view): colour jitter with torchvision
ColorJitter's semantics (factors uniform in [max(0, 1 - b), 1 + b], hue shift uniform in
[-h, h], the four adjustments applied in a random order as torchvision does), random
grayscale, Gaussian blur with sigma uniform in a range.
"""
import math
from typing import Optional, Sequence, Tuple

import tensorflow as tf

Tensor = tf.Tensor
Geometric = Tuple[Tensor, Tensor, Optional[Tensor]]

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale and PIL's convert("L").
_LUMA = (0.2989, 0.587, 0.114)
# Named explicitly: "auto_select" may pick another generator on another device or version.
ALG = "philox"


def split_seed(seed: Tensor, num: int):
  """`num` independent shape-[2] seeds derived from `seed`."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num, alg=ALG))


def _as_float(image: Tensor) -> Tensor:
  return tf.cast(image, tf.float32)


def _rescaled_size(h: Tensor, w: Tensor, seed: Tensor, scale_range: Sequence[float]):
  """The random size of `random_rescale`: long side uniform in [lo * L, hi * L]."""
  long_side = tf.cast(tf.maximum(h, w), tf.float64)
  lo = tf.cast(scale_range[0] * long_side, tf.int32)
  hi = tf.cast(scale_range[1] * long_side, tf.int32)
  new_long = tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32,
                                         alg=ALG)
  new_long_f = tf.cast(new_long, tf.float64)
  hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  out_h = tf.where(h > w, new_long, tf.cast(hf * new_long_f / wf + 0.5, tf.int32))
  out_w = tf.where(h > w, tf.cast(wf * new_long_f / hf + 0.5, tf.int32), new_long)
  return out_h, out_w


def random_rescale(image: Tensor, label: Tensor, seed: Tensor,
                   scale_range: Sequence[float], ignore: Optional[Tensor] = None) -> Geometric:
  """Rescales so the long side is an integer uniform in [lo * L, hi * L], aspect kept.

  As the release: L is the original long side, the bounds are truncated to integers, the
  short side is rounded half up. The image is resized bilinearly with antialiasing (close
  to PIL's BILINEAR, which widens its filter when shrinking), label and ignore by nearest
  neighbour.

  Args:
    image: (H, W, 3) RGB, uint8 or float.
    label: (H, W) integer label map.
    seed: shape-[2] integer seed.
    scale_range: (lo, hi) factors of the long side.
    ignore: optional (H, W) mask resized like the label.

  Returns:
    (image float32, label, ignore) at the new size.
  """
  shape = tf.shape(label)
  size = tf.stack(_rescaled_size(shape[0], shape[1], seed, scale_range))
  image = tf.image.resize(_as_float(image), size, method="bilinear", antialias=True)

  def nearest(x):
    return tf.image.resize(x[..., None], size, method="nearest")[..., 0]

  return image, nearest(label), None if ignore is None else nearest(ignore)


def rescale(image: Tensor, label: Tensor, factor: float) -> Tuple[Tensor, Tensor]:
  """`random_rescale` by exactly `factor` (its range collapsed to one value: the seed
  plays no part): the same resize as training, for validation (`data.eval_scale`)."""
  image, label, _ = random_rescale(image, label, tf.zeros([2], tf.int32), (factor, factor))
  return image, label


def _crop_offsets(padded_h: Tensor, padded_w: Tensor, crop: int, seed: Tensor):
  """The random window of `random_crop_and_pad` in an image padded to >= crop."""
  seed_y, seed_x = split_seed(seed, 2)

  def offset(s, size):
    return tf.random.stateless_uniform([], s, 0, size - crop + 1, dtype=tf.int32, alg=ALG)

  return offset(seed_y, padded_h), offset(seed_x, padded_w)


def random_crop_and_pad(image: Tensor, label: Tensor, ignore: Optional[Tensor], seed: Tensor,
                        crop: int, label_pad: int = 255, ignore_pad: int = 255) -> Geometric:
  """Pads bottom/right to at least `crop` x `crop`, then crops a uniform random window.

  Padding values: image 0, label `label_pad`, ignore `ignore_pad`, as the release.

  Args:
    image: (H, W, 3) RGB.
    label: (H, W) label map.
    ignore: optional (H, W) mask, or None.
    seed: shape-[2] integer seed.
    crop: side of the square output.
    label_pad: label value of padded pixels.
    ignore_pad: ignore-mask value of padded pixels.

  Returns:
    (image float32 (crop, crop, 3), label (crop, crop), ignore (crop, crop) or None).
  """
  shape = tf.shape(label)
  pad_h = tf.maximum(crop - shape[0], 0)
  pad_w = tf.maximum(crop - shape[1], 0)
  paddings = [[0, pad_h], [0, pad_w]]
  image = tf.pad(_as_float(image), paddings + [[0, 0]], constant_values=0.0)
  label = tf.pad(label, paddings, constant_values=tf.cast(label_pad, label.dtype))
  if ignore is not None:
    ignore = tf.pad(ignore, paddings, constant_values=tf.cast(ignore_pad, ignore.dtype))
  y, x = _crop_offsets(shape[0] + pad_h, shape[1] + pad_w, crop, seed)

  def window(t):
    t = t[y:y + crop, x:x + crop]
    t.set_shape([crop, crop] + t.shape[2:])
    return t

  return window(image), window(label), None if ignore is None else window(ignore)


def _source_span(offset: Tensor, crop: int, scale: Tensor, size: Tensor):
  """[start, stop) of the source rows (or columns) that output rows [offset, offset+crop)
  of an antialiased resize by `scale` read, with a margin beyond the filter's reach."""
  reach = tf.maximum(1.0, 1.0 / scale) + 2.0   # triangle filter radius, source pixels
  first = (tf.cast(offset, tf.float32) + 0.5) / scale - 0.5 - reach
  last = (tf.cast(offset + crop, tf.float32) - 0.5) / scale - 0.5 + reach
  start = tf.clip_by_value(tf.cast(tf.floor(first), tf.int32), 0, size)
  stop = tf.clip_by_value(tf.cast(tf.math.ceil(last), tf.int32) + 1, start, size)
  return start, stop


def _nearest_indices(offset: Tensor, crop: int, in_size: Tensor, out_size: Tensor) -> Tensor:
  """Source index of output pixels offset..offset+crop-1 of a nearest resize in_size ->
  out_size (half-pixel centres, as tf.image.resize), clipped into the source."""
  out = tf.cast(offset + tf.range(crop), tf.float32)
  # The scale first, in float32, then the product: TensorFlow's rounding, to the bit.
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  src = tf.floor((out + 0.5) * scale)
  return tf.clip_by_value(tf.cast(src, tf.int32), 0, in_size - 1)


def random_rescale_crop(image: Tensor, label: Tensor, ignore: Optional[Tensor],
                        seed_rescale: Tensor, seed_crop: Tensor,
                        scale_range: Sequence[float], crop: int, label_pad: int = 255,
                        ignore_pad: int = 255) -> Geometric:
  """`random_rescale` then `random_crop_and_pad`, computing only the cropped window.

  Same random draws and the same output (the image up to float rounding, ~1e-3 on the
  0..255 scale; labels exactly), but the rescaled image is never materialised: the
  window is resampled directly from the source rows and columns it reads
  (`ScaleAndTranslate`, the kernel behind antialiased `tf.image.resize`, with the
  window's offset as translation), and labels are gathered at their nearest source
  pixels. At Cityscapes' sizes a 2x rescale would otherwise write a 4096 x 2048 image to
  keep 769 x 769 of it.

  Args:
    image: (H, W, 3) RGB, uint8 or float.
    label: (H, W) integer label map.
    ignore: optional (H, W) mask, or None.
    seed_rescale: the seed `random_rescale` would get.
    seed_crop: the seed `random_crop_and_pad` would get.
    scale_range: (lo, hi) factors of the long side.
    crop: side of the square output.
    label_pad: label value of padded pixels.
    ignore_pad: ignore-mask value of padded pixels.

  Returns:
    (image float32 (crop, crop, 3), label (crop, crop), ignore (crop, crop) or None).
  """
  shape = tf.shape(label)
  h, w = shape[0], shape[1]
  out_h, out_w = _rescaled_size(h, w, seed_rescale, scale_range)
  y, x = _crop_offsets(tf.maximum(out_h, crop), tf.maximum(out_w, crop), crop, seed_crop)
  scale_y = tf.cast(out_h, tf.float32) / tf.cast(h, tf.float32)
  scale_x = tf.cast(out_w, tf.float32) / tf.cast(w, tf.float32)
  y0, y1 = _source_span(y, crop, scale_y, h)
  x0, x1 = _source_span(x, crop, scale_x, w)
  source = _as_float(image)[y0:y1, x0:x1]
  # Output pixel j of the window is pixel j + offset of the full resize; reading from
  # source row y0 shifts that by y0 * scale.
  translation = tf.stack([tf.cast(y0, tf.float32) * scale_y - tf.cast(y, tf.float32),
                          tf.cast(x0, tf.float32) * scale_x - tf.cast(x, tf.float32)])
  window = tf.raw_ops.ScaleAndTranslate(
      images=source[None], size=tf.constant([crop, crop]), scale=tf.stack([scale_y, scale_x]),
      translation=translation, kernel_type="triangle", antialias=True)[0]
  # Window pixels past the rescaled image are padding.
  inside_y = y + tf.range(crop) < out_h
  inside_x = x + tf.range(crop) < out_w
  inside = inside_y[:, None] & inside_x[None, :]
  image = tf.where(inside[..., None], window, 0.0)
  image.set_shape([crop, crop, 3])
  rows = _nearest_indices(y, crop, h, out_h)
  cols = _nearest_indices(x, crop, w, out_w)

  def gather(t, pad):
    t = tf.gather(tf.gather(t, rows, axis=0), cols, axis=1)
    t = tf.where(inside, t, tf.cast(pad, t.dtype))
    t.set_shape([crop, crop])
    return t

  return (image, gather(label, label_pad),
          None if ignore is None else gather(ignore, ignore_pad))


def center_crop_and_pad(image: Tensor, label: Tensor, crop: int,
                        label_pad: int = 255) -> Tuple[Tensor, Tensor]:
  """VOC validation view: pad to at least `crop` x `crop`, then take the central window.

  As the release's validation transform (`crop_center`): a side shorter than `crop` is
  padded by p = crop - side, p // 2 before it (top / left) and the rest after it
  (bottom / right), so the image stays centred, unlike the training crop's bottom/right
  padding. The image is padded with 0 on the raw 0..255 scale, i.e. before `normalize`
  (the network sees -mean / std there), the label with `label_pad` so that padding is
  never scored. Then the window starts at ((H' - crop) // 2, (W' - crop) // 2) of the
  padded size H' x W': a padded side is kept whole, a longer side loses
  (side - crop) // 2 pixels at the top / left and the rest at the bottom / right.

  Args:
    image: (H, W, 3) RGB, uint8 or float, not yet normalised.
    label: (H, W) label map.
    crop: side of the square output (513 for VOC).
    label_pad: label value of padded pixels.

  Returns:
    (image float32 (crop, crop, 3), label (crop, crop)), with static shapes so that
    validation batches can be formed inside tf.data.
  """
  shape = tf.shape(label)
  pad_h = tf.maximum(crop - shape[0], 0)
  pad_w = tf.maximum(crop - shape[1], 0)
  paddings = [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2]]
  image = tf.pad(_as_float(image), paddings + [[0, 0]], constant_values=0.0)
  label = tf.pad(label, paddings, constant_values=tf.cast(label_pad, label.dtype))
  y = (shape[0] + pad_h - crop) // 2
  x = (shape[1] + pad_w - crop) // 2

  def window(t):
    t = t[y:y + crop, x:x + crop]
    t.set_shape([crop, crop] + t.shape[2:])
    return t

  return window(image), window(label)


def random_flip(image: Tensor, label: Tensor, ignore: Optional[Tensor],
                seed: Tensor, prob: float = 0.5) -> Geometric:
  """Flips image, label and ignore left-right together with probability `prob`."""
  tensors = [image, label] + ([] if ignore is None else [ignore])
  flip = tf.random.stateless_uniform([], seed, alg=ALG) < prob
  flipped = tf.cond(flip, lambda: [tf.reverse(t, axis=[1]) for t in tensors],
                    lambda: [tf.identity(t) for t in tensors])
  return flipped[0], flipped[1], flipped[2] if ignore is not None else None


def _grayscale(x: Tensor) -> Tensor:
  """(H, W, 1) luma of an (H, W, 3) image."""
  return tf.reduce_sum(x * tf.constant(_LUMA, x.dtype), axis=-1, keepdims=True)


def _blend(x: Tensor, y: Tensor, factor: Tensor) -> Tensor:
  """factor * x + (1 - factor) * y, clipped to [0, 1] (torchvision's _blend)."""
  return tf.clip_by_value(factor * x + (1.0 - factor) * y, 0.0, 1.0)


def color_jitter(image: Tensor, seed: Tensor, brightness: float, contrast: float,
                 saturation: float, hue: float) -> Tensor:
  """torchvision's ColorJitter on a 0..255 RGB image; returns float32 0..255.

  Factors are uniform in [max(0, 1 - b), 1 + b] (brightness, contrast, saturation) and the
  hue shift uniform in [-hue, hue] (fraction of the hue circle); the four adjustments run
  in a random order. Contrast blends towards the mean luma of the whole image, saturation
  towards the per-pixel luma, as torchvision does for tensors; values are clipped to the
  valid range after every adjustment.
  """
  seeds = split_seed(seed, 5)

  def factor(s, b):
    return tf.random.stateless_uniform([], s, max(0.0, 1.0 - b), 1.0 + b, alg=ALG)

  f_brightness = factor(seeds[0], brightness)
  f_contrast = factor(seeds[1], contrast)
  f_saturation = factor(seeds[2], saturation)
  f_hue = tf.random.stateless_uniform([], seeds[3], -hue, hue, alg=ALG)
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4], alg=ALG))

  adjustments = (
      lambda x: tf.clip_by_value(x * f_brightness, 0.0, 1.0),
      lambda x: _blend(x, tf.reduce_mean(_grayscale(x)), f_contrast),
      lambda x: _blend(x, _grayscale(x), f_saturation),
      lambda x: tf.image.adjust_hue(x, f_hue),
  )
  x = _as_float(image) / 255.0
  for i in range(4):
    x = tf.switch_case(order[i], [lambda f=f, x=x: f(x) for f in adjustments])
    x.set_shape(image.shape)
  return x * 255.0


def grayscale(image: Tensor) -> Tensor:
  """Luma replicated to 3 channels (torchvision's RandomGrayscale output)."""
  return tf.tile(_grayscale(_as_float(image)), [1, 1, 3])


def gaussian_blur(image: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
  """Separable Gaussian blur with standard deviation `sigma`, symmetric padding.

  The kernel has a fixed size 2 * ceil(3 * max_sigma) + 1 (13 taps for the release's
  sigma range [0.1, 2.0]) whatever `sigma` is, so shapes are static; for smaller sigma
  the outer taps are just ~0. PIL's GaussianBlur(radius=sigma), which the release uses,
  approximates the same Gaussian with box filters.
  """
  radius = max(1, int(math.ceil(3.0 * max_sigma)))
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  sigma = tf.cast(sigma, tf.float32)
  kernel = tf.exp(-0.5 * tf.square(taps / sigma))
  kernel /= tf.reduce_sum(kernel)
  x = tf.pad(_as_float(image)[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
             mode="SYMMETRIC")
  channels = 3
  k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  k_w = tf.reshape(k_h, [1, -1, channels, 1])
  x = tf.nn.depthwise_conv2d(x, k_h, strides=[1, 1, 1, 1], padding="VALID")
  x = tf.nn.depthwise_conv2d(x, k_w, strides=[1, 1, 1, 1], padding="VALID")
  return x[0]


def strong_augment(image: Tensor, seed: Tensor, *, color_jitter_prob: float,
                   brightness: float, contrast: float, saturation: float, hue: float,
                   grayscale_prob: float, blur_prob: float,
                   blur_sigma: Sequence[float]) -> Tensor:
  """Colour jitter (p), grayscale (p), Gaussian blur (p), in the release's order.

  Args:
    image: (H, W, 3) RGB on 0..255.
    seed: shape-[2] integer seed.
    color_jitter_prob: probability of applying `color_jitter`.
    brightness: colour jitter brightness strength.
    contrast: colour jitter contrast strength.
    saturation: colour jitter saturation strength.
    hue: colour jitter hue strength (at most 0.5).
    grayscale_prob: probability of converting to grayscale.
    blur_prob: probability of blurring.
    blur_sigma: (lo, hi) range of the blur's standard deviation in pixels.

  Returns:
    float32 (H, W, 3) on 0..255, same geometry as `image`.
  """
  s_jitter_p, s_jitter, s_gray_p, s_blur_p, s_sigma = split_seed(seed, 5)
  image = _as_float(image)

  def maybe(s, prob, fn, x):
    apply = tf.random.stateless_uniform([], s, alg=ALG) < prob
    y = tf.cond(apply, lambda: fn(x), lambda: tf.identity(x))
    y.set_shape(x.shape)
    return y

  image = maybe(s_jitter_p, color_jitter_prob,
                lambda x: color_jitter(x, s_jitter, brightness, contrast, saturation, hue),
                image)
  image = maybe(s_gray_p, grayscale_prob, grayscale, image)
  sigma = tf.random.stateless_uniform([], s_sigma, blur_sigma[0], blur_sigma[1], alg=ALG)
  image = maybe(s_blur_p, blur_prob, lambda x: gaussian_blur(x, sigma, blur_sigma[1]), image)
  return image


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
  """(image - mean) / std per channel, on 0..255 RGB; float32."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (_as_float(image) - mean) / std
