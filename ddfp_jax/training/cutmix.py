"""CutMix of the strong unlabeled view, with the release's box, on the device.

Per example i a box of half the image area is cut from example i + 1 (mod B): width
uniform in [W/2 + 1, W - 1], height round(H W / 2 / width), position uniform. The same box
mixes images, pseudo labels and ignore masks. Whether a step mixes at all is one coin with
probability p per device and step, as in the release. Static shapes: the boxes are masks
built from iotas, so the step compiles once.
"""
from typing import Tuple

import jax
import jax.numpy as jnp


def cutmix_boxes(rng: jax.Array, batch: int, height: int, width: int) -> jnp.ndarray:
  """(B, H, W) bool masks, True inside each example's box."""
  k_w, k_x, k_y = jax.random.split(rng, 3)
  box_w = jax.random.randint(k_w, (batch,), width // 2 + 1, max(width, width // 2 + 2))
  # NumPy's round (half to even), as the release's np.round.
  box_h = jnp.round(height * width / 2 / box_w).astype(jnp.int32)
  x0 = jax.random.randint(k_x, (batch,), 0, width - box_w + 1)
  y0 = jax.random.randint(k_y, (batch,), 0, height - box_h + 1)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside_y = (rows >= y0[:, None, None]) & (rows < (y0 + box_h)[:, None, None])
  inside_x = (cols >= x0[:, None, None]) & (cols < (x0 + box_w)[:, None, None])
  return inside_y & inside_x


def cutmix(rng: jax.Array, prob: float, image: jnp.ndarray, label: jnp.ndarray,
           ignore: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Mixes (image (B,H,W,C), label (B,H,W), ignore (B,H,W)) with probability `prob`."""
  k_coin, k_box = jax.random.split(rng)
  batch, height, width = label.shape
  box = cutmix_boxes(k_box, batch, height, width)
  box = box & jax.random.bernoulli(k_coin, prob)

  def mix(x):
    inside = box.reshape(box.shape + (1,) * (x.ndim - 3))
    return jnp.where(inside, jnp.roll(x, -1, axis=0), x)

  return mix(image), mix(label), mix(ignore)
