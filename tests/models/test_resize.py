"""Resize ops against closed forms and against PyTorch's F.interpolate."""
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models.layers import max_pool
from ddfp_jax.models.resize import resize_bilinear, resize_nearest


def test_align_corners_maps_a_linear_ramp_exactly():
  # With align_corners=True, a linear function of the index is resampled exactly and the
  # corner pixels are kept: f(i) = 3 i + 1 on 5 samples -> g(j) = 3 * j * 4 / 8 + 1 on 9.
  ramp = (3.0 * np.arange(5) + 1.0).astype(np.float32)
  x = jnp.asarray(ramp[None, :, None, None] * np.ones((1, 5, 4, 2), np.float32))
  y = resize_bilinear(x, (9, 4))
  expected = 3.0 * np.arange(9) * 4.0 / 8.0 + 1.0
  np.testing.assert_allclose(np.asarray(y[0, :, 0, 0]), expected, rtol=0, atol=1e-5)
  assert y.shape == (1, 9, 4, 2)


def test_resize_from_single_pixel_broadcasts():
  x = jnp.arange(6.0).reshape(2, 1, 1, 3)
  y = resize_bilinear(x, (5, 7))
  np.testing.assert_array_equal(np.asarray(y), np.broadcast_to(np.asarray(x), (2, 5, 7, 3)))


@pytest.mark.parametrize("in_hw,out_hw", [((7, 9), (25, 33)), ((33, 33), (129, 129)),
                                          ((129, 129), (513, 513)), ((20, 30), (7, 11))])
def test_bilinear_matches_torch(in_hw, out_hw):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(0).randn(2, *in_hw, 3).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
      align_corners=True).permute(0, 2, 3, 1).numpy()
  out = np.asarray(resize_bilinear(jnp.asarray(x), out_hw))
  np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("in_hw,out_hw", [((513, 513), (129, 129)), ((769, 769), (193, 193)),
                                          ((10, 10), (20, 20)), ((17, 23), (5, 9))])
def test_nearest_matches_torch(in_hw, out_hw):
  torch = pytest.importorskip("torch")
  labels = np.random.RandomState(1).randint(0, 21, size=(2,) + in_hw).astype(np.int32)
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(labels[:, None].astype(np.float32)), size=out_hw,
      mode="nearest")[:, 0].numpy().astype(np.int32)
  out = np.asarray(resize_nearest(jnp.asarray(labels), out_hw))
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("size", [257, 256, 385, 33, 8])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_max_pool_matches_torch(size, ceil_mode):
  torch = pytest.importorskip("torch")
  x = np.random.RandomState(size).randn(1, size, size + 1, 2).astype(np.float32)
  ref = torch.nn.functional.max_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, 1,
      ceil_mode=ceil_mode).permute(0, 2, 3, 1).numpy()
  out = np.asarray(max_pool(jnp.asarray(x), 3, 2, 1, ceil_mode=ceil_mode))
  assert out.shape == ref.shape
  np.testing.assert_array_equal(out, ref)
