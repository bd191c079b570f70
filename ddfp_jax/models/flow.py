"""GLOW-style affine coupling flow φ that maps decoder features to the GMM latent space.

The layout follows the released DDFP flow (FrEIA's ``GLOWCouplingBlock`` followed by
``PermuteRandom(seed=k)``) so that released weights load one-to-one and the densities agree
numerically; see ``flow_params_from_torch``.
"""
import re
from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# FrEIA's "ATAN" soft clamp uses this truncated 2/π rather than the exact value. Keeping the
# truncation reproduces the released densities and keeps |s_c| < 0.999 · clamp < clamp.
_ATAN_SCALE = 0.636

# The release overwrites every flow parameter (kernels and biases) with 0.05 · N(0, 1).
_INIT = nn.initializers.normal(stddev=0.05)

# Maps a FrEIA subnet's ``nn.Sequential`` index (Linear layers sit at 0, 2, 4 with ReLUs
# in between) to the name of the matching Dense layer here.
_TORCH_LINEAR_TO_DENSE = {0: 'dense_0', 2: 'dense_1', 4: 'dense_2'}


def channel_permutation(seed: int, dim: int) -> np.ndarray:
  """The fixed channel permutation that follows coupling block ``seed``.

  Args:
    seed: Block index; FrEIA's ``PermuteRandom(seed=k)`` reseeds NumPy with ``k``.
    dim: Number of channels.

  Returns:
    An int array ``perm`` of shape (dim,); the forward pass computes ``x[..., perm]``.
  """
  return np.random.RandomState(seed).permutation(dim)


def soft_clamp(s: jax.Array, clamp: float) -> jax.Array:
  """Bounds a raw log-scale to (-clamp, clamp) smoothly, as FrEIA's "ATAN" activation."""
  return clamp * _ATAN_SCALE * jnp.arctan(s)


class _SubnetMLP(nn.Module):
  """Linear–ReLU–Linear–ReLU–Linear, the release's coupling subnet."""
  hidden: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, out_features: int) -> jax.Array:
    # The output width depends on the input's channel count, so it is a call argument
    # rather than a field; forward and inverse call with the same width and share params.
    def dense(features, name):
      return nn.Dense(features, kernel_init=_INIT, bias_init=_INIT, dtype=jnp.float32,
                      param_dtype=jnp.float32, precision=self.precision, name=name)

    x = nn.relu(dense(self.hidden, 'dense_0')(x))
    x = nn.relu(dense(self.hidden, 'dense_1')(x))
    return dense(out_features, 'dense_2')(x)


class CouplingBlock(nn.Module):
  """One GLOW affine coupling block on (N, D) inputs.

  ``x1`` is the first ``D // 2`` channels and ``x2`` the rest. ``subnet2`` reads ``x2`` and
  predicts (s2, t2) for ``x1``; ``subnet1`` reads the updated ``y1`` and predicts (s1, t1)
  for ``x2``. These are the names FrEIA uses, so weights map by name.

  Attributes:
    hidden: Width of the subnets' hidden layers.
    clamp: Soft bound on the log-scales: |s_c| < clamp.
    precision: Matmul precision of the subnets; None is the backend default (which may use
      reduced-precision passes for float32 on GPUs), ``'highest'`` gives full float32.
  """
  hidden: int = 256
  clamp: float = 2.0
  precision: Any = None

  def setup(self):
    self.subnet1 = _SubnetMLP(self.hidden, self.precision)
    self.subnet2 = _SubnetMLP(self.hidden, self.precision)

  def _scale_shift(self, subnet, u, out):
    a = subnet(u, 2 * out)
    return soft_clamp(a[:, :out], self.clamp), a[:, out:]

  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Forward map.

    Args:
      x: (N, D) float32.

    Returns:
      ``(y, log_det)`` with y of shape (N, D) and log|det ∂y/∂x| of shape (N,).
    """
    d1 = x.shape[-1] // 2
    d2 = x.shape[-1] - d1
    x1, x2 = x[:, :d1], x[:, d1:]
    s2, t2 = self._scale_shift(self.subnet2, x2, d1)
    y1 = x1 * jnp.exp(s2) + t2
    s1, t1 = self._scale_shift(self.subnet1, y1, d2)
    y2 = x2 * jnp.exp(s1) + t1
    log_det = jnp.sum(s2, axis=-1) + jnp.sum(s1, axis=-1)
    return jnp.concatenate([y1, y2], axis=-1), log_det

  def inverse(self, y: jax.Array) -> jax.Array:
    """Inverse map: undoes the two couplings in reverse order.

    Args:
      y: (N, D) float32.

    Returns:
      x of shape (N, D) with ``self(x)[0] == y``.
    """
    d1 = y.shape[-1] // 2
    d2 = y.shape[-1] - d1
    y1, y2 = y[:, :d1], y[:, d1:]
    s1, t1 = self._scale_shift(self.subnet1, y1, d2)
    x2 = (y2 - t1) * jnp.exp(-s1)
    s2, t2 = self._scale_shift(self.subnet2, x2, d1)
    x1 = (y1 - t2) * jnp.exp(-s2)
    return jnp.concatenate([x1, x2], axis=-1)


def _as_rows(x: jax.Array) -> Tuple[jax.Array, Tuple[int, ...]]:
  # Densities are sums of hundreds of log-scales and squared distances: bfloat16 (about 3
  # significant digits) would swamp the differences between pixels, so the flow always
  # runs in float32 whatever dtype the decoder features arrive in.
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(-1, x.shape[-1]), x.shape[:-1]


class CouplingFlow(nn.Module):
  """A stack of coupling blocks, block k followed by ``channel_permutation(k, D)``.

  Accepts any (..., D) input; leading axes are flattened for the computation and restored.

  Attributes:
    num_blocks: Number of coupling blocks.
    hidden: Width of the subnets' hidden layers.
    clamp: Soft bound on each log-scale.
    precision: Matmul precision of the subnets (see ``CouplingBlock``).
  """
  num_blocks: int = 2
  hidden: int = 256
  clamp: float = 2.0
  precision: Any = None

  def setup(self):
    self.blocks = [
        CouplingBlock(self.hidden, self.clamp, self.precision) for _ in range(self.num_blocks)
    ]

  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Maps features to the latent space.

    Args:
      x: (..., D) features of any float dtype.

    Returns:
      ``(z, log_det)``: z of shape (..., D) in float32 and log|det ∂z/∂x| of shape (...).
    """
    h, batch_shape = _as_rows(x)
    log_det = jnp.zeros(h.shape[:1], jnp.float32)
    for k, block in enumerate(self.blocks):
      h, block_log_det = block(h)
      log_det = log_det + block_log_det
      h = h[:, channel_permutation(k, h.shape[-1])]
    return h.reshape(*batch_shape, h.shape[-1]), log_det.reshape(batch_shape)

  def inverse(self, z: jax.Array) -> jax.Array:
    """Maps latents back to features.

    Args:
      z: (..., D) latents.

    Returns:
      x of shape (..., D) in float32 with ``self(x)[0] == z``.
    """
    h, batch_shape = _as_rows(z)
    for k in reversed(range(self.num_blocks)):
      h = h[:, np.argsort(channel_permutation(k, h.shape[-1]))]
      h = self.blocks[k].inverse(h)
    return h.reshape(*batch_shape, h.shape[-1])


def flow_params_from_torch(state_dict: Mapping[str, Any],
                           num_blocks: int) -> dict:
  """Converts a FrEIA flow's state dict into ``CouplingFlow`` params.

  Two key layouts are recognised, because both put block k's coupling at ``module_list``
  index 2k and its permutation at 2k + 1:

  * ``SequenceINN`` / ``GraphINN`` / ``ReversibleGraphNet`` on their own:
    ``module_list.0.subnet1.0.weight``, ...;
  * the release's flow module, which holds that net as ``inn`` next to ``means``:
    ``inn.module_list.0.subnet1.0.weight``, ... (any further prefix, such as the
    ``module.`` a DistributedDataParallel wrapper adds, is accepted too).

  Other entries (``means``, the permutations) are not converted; the GMM means are a
  separate parameter of ``FeatureDensity``. When the permutations are present they are
  checked against ``channel_permutation``, since the flow here fixes them by seed.

  Args:
    state_dict: Names to NumPy arrays (CPU torch tensors also work via ``np.asarray``).
    num_blocks: Number of coupling blocks expected.

  Returns:
    The ``params`` collection of a ``CouplingFlow(num_blocks)`` (without the outer
    ``{'params': ...}`` wrapper), in float32.

  Raises:
    KeyError: if a coupling weight is missing or a key appears under two prefixes.
    ValueError: if the state dict holds more blocks than ``num_blocks`` or a stored
      permutation differs from the seeded one.
  """
  linear = re.compile(r'(?:^|\.)module_list\.(\d+)\.(subnet[12])\.(\d+)\.(weight|bias)$')
  perm_key = re.compile(r'(?:^|\.)module_list\.(\d+)\.perm$')
  found = {}
  perms = {}
  for key, value in state_dict.items():
    if m := linear.search(key):
      index = (int(m.group(1)), m.group(2), int(m.group(3)), m.group(4))
      if index in found:
        raise KeyError(f'{key!r}: more than one flow in the state dict')
      found[index] = np.asarray(value, np.float32)
    elif m := perm_key.search(key):
      perms[int(m.group(1))] = np.asarray(value)
  extra = sorted({i for i, *_ in found if i >= 2 * num_blocks})
  if extra:
    raise ValueError(f'state dict has couplings at module_list {extra}, beyond '
                     f'num_blocks={num_blocks}')

  params = {}
  for k in range(num_blocks):
    block = {}
    for subnet in ('subnet1', 'subnet2'):
      layers = {}
      for torch_index, dense in _TORCH_LINEAR_TO_DENSE.items():
        try:
          weight = found[(2 * k, subnet, torch_index, 'weight')]
          bias = found[(2 * k, subnet, torch_index, 'bias')]
        except KeyError as e:
          raise KeyError(f'no weights for block {k} {subnet} layer {torch_index}') from e
        # torch.nn.Linear stores (out, in); flax Dense kernels are (in, out).
        layers[dense] = {'kernel': weight.T.copy(), 'bias': bias}
      block[subnet] = layers
    if (perm := perms.get(2 * k + 1)) is not None:
      if not np.array_equal(perm, channel_permutation(k, perm.shape[0])):
        raise ValueError(f'permutation after block {k} is not RandomState({k}).permutation')
    params[f'blocks_{k}'] = block
  return params
