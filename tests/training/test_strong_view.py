"""The on-device strong view (`ddfp_jax.training.strong_view`) against independent
references: PyTorch's interpolation for the rescale, `colorsys` for the hue, closed forms
for brightness / contrast / saturation, SciPy's Gaussian filter for the blur."""
import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ddfp_jax.training import strong_view as sv


@pytest.mark.parametrize("scale,offset", [(1.5, (3, 5)), (0.75, (0, 0)), (1.0, (0, 0))])
def test_rescale_crop_is_resize_then_pad_then_crop(scale, offset):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  h, w = 12, 16
  image = rng.normal(size=(h, w, 3)).astype(np.float32)
  label = rng.integers(0, 5, size=(h, w)).astype(np.int32)
  got, maps = sv.rescale_crop(jnp.asarray(image), {"label": jnp.asarray(label)},
                              {"label": 255}, jnp.float32(scale), offset)
  size = (int(np.floor(h * scale)), int(np.floor(w * scale)))
  t = torch.tensor(image).permute(2, 0, 1)[None]
  resized = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
  resized = resized.permute(1, 2, 0).numpy()
  nearest = F.interpolate(torch.tensor(label, dtype=torch.float32)[None, None], size=size,
                          mode="nearest-exact")[0, 0].numpy().astype(np.int32)
  pad_h, pad_w = max(h - size[0], 0), max(w - size[1], 0)
  resized = np.pad(resized, ((0, pad_h), (0, pad_w), (0, 0)))
  nearest = np.pad(nearest, ((0, pad_h), (0, pad_w)), constant_values=255)
  y, x = offset
  np.testing.assert_allclose(got, resized[y:y + h, x:x + w], atol=1e-5)
  np.testing.assert_array_equal(maps["label"], nearest[y:y + h, x:x + w])


def test_hue_shift_matches_colorsys():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(6, 7, 3)).astype(np.float32)
  x[0, 0] = (0.5, 0.5, 0.5)          # grey: hue undefined, stays grey
  x[0, 1] = (1.0, 0.0, 0.0)
  shift = 0.2
  got = np.asarray(sv.adjust_hue(jnp.asarray(x), shift))
  want = np.zeros_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      hh, ss, vv = colorsys.rgb_to_hsv(*x[i, j])
      want[i, j] = colorsys.hsv_to_rgb((hh + shift) % 1.0, ss, vv)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_jitter_applies_the_closed_forms_in_the_given_order():
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(5, 4, 3)).astype(np.float32)
  b, c, s = 1.2, 0.8, 1.25
  luma = lambda y: (y @ np.asarray(sv.LUMA, np.float32))[..., None]
  ops = [lambda y: np.clip(y * b, 0, 1),
         lambda y: np.clip(c * y + (1 - c) * luma(y).mean(), 0, 1),
         lambda y: np.clip(s * y + (1 - s) * luma(y), 0, 1)]
  factors = jnp.asarray([b, c, s, 0.0])
  for order in ([0, 1, 2, 3], [2, 1, 3, 0]):
    want = x
    for i in order:
      if i < 3:
        want = ops[i](want)
    got = sv.jitter(jnp.asarray(x), factors, jnp.asarray(order))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gaussian_blur_matches_scipy():
  rng = np.random.default_rng(3)
  x = rng.uniform(size=(14, 11, 3)).astype(np.float32)
  sigma, max_sigma = 0.9, 1.15
  radius = int(np.ceil(3 * max_sigma))
  want = x
  for axis in (0, 1):
    want = ndimage.gaussian_filter1d(want, sigma, axis=axis, mode="reflect",
                                     truncate=radius / sigma)
  np.testing.assert_allclose(sv.gaussian_blur(jnp.asarray(x), sigma, max_sigma), want,
                             atol=1e-5)


def test_strong_view_moves_image_and_maps_alike():
  """With no colour and no blur the image's first channel (set to the label) and the
  label stay together through rescale, CutMix and flip; padding is the maps' fill."""
  rng = np.random.default_rng(4)
  label = rng.integers(0, 4, size=(4, 16, 16)).astype(np.int32)
  image = np.zeros((4, 16, 16, 3), np.float32)
  image[..., 0] = label
  config = sv.StrongViewConfig(scale_range=(1.0, 1.0), cutmix_prob=1.0, color_prob=0.0,
                               blur_prob=0.0, flip_prob=0.5, mean=(0, 0, 0), std=(1, 1, 1))
  conf = rng.uniform(size=label.shape).astype(np.float32)
  out, maps = sv.strong_view(jax.random.key(0), jnp.asarray(image),
                             {"label": jnp.asarray(label), "conf": jnp.asarray(conf)},
                             {"label": 255, "conf": 0.0}, config)
  np.testing.assert_allclose(out[..., 0], maps["label"], atol=1e-5)
  assert not np.array_equal(maps["label"], label)              # CutMix happened
  # Every output confidence comes from the same source pixel as its label.
  pairs = set(zip(label.ravel().tolist(), conf.ravel().tolist()))
  assert set(zip(np.asarray(maps["label"]).ravel().tolist(),
                 np.asarray(maps["conf"]).ravel().tolist())) <= pairs

  half = config._replace(scale_range=(0.5, 0.5), cutmix_prob=0.0, flip_prob=0.0)
  out, maps = sv.strong_view(jax.random.key(1), jnp.asarray(image),
                             {"label": jnp.asarray(label)}, {"label": 255}, half)
  assert np.all(np.asarray(maps["label"])[:, 8:] == 255)
  assert np.all(np.asarray(maps["label"])[:, :, 8:] == 255)
  assert np.all(np.asarray(out)[:, 8:] == 0) and np.all(np.asarray(maps["label"])[:, :8, :8] < 4)


def test_colour_and_blur_keep_the_normalised_range():
  config = sv.StrongViewConfig(color_prob=1.0, blur_prob=1.0)
  rng = np.random.default_rng(5)
  raw = rng.uniform(0, 255, size=(2, 12, 12, 3)).astype(np.float32)
  image = (raw - np.asarray(config.mean)) / np.asarray(config.std)
  out, _ = sv.strong_view(jax.random.key(2), jnp.asarray(image, jnp.float32),
                          {"ignore": jnp.zeros((2, 12, 12), jnp.int32)}, {"ignore": 255},
                          config)
  back = np.asarray(out) * np.asarray(config.std) + np.asarray(config.mean)
  assert back.min() >= -1e-3 and back.max() <= 255 + 1e-3
  assert not np.allclose(out, image)
