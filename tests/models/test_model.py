"""DeepLabV3+ / ResNet: shapes, stage composition, cross-replica BN, dropout, dtypes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models.deeplab import ASPP, DeepLabV3Plus
from ddfp_jax.models.layers import conv, dropout2d, space_to_batch_conv
from ddfp_jax.models.resnet import ResNet

TINY = dict(depth=18, width=1 / 16)


def _init(model, shape, seed=0):
  x = jnp.asarray(np.random.RandomState(seed).randn(*shape).astype(np.float32))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), x)
  return variables, x


@pytest.fixture(scope="module")
def tiny():
  """A width-1/16 ResNet-18 DeepLabV3+, its variables and a 2 x 33 x 33 batch."""
  model = DeepLabV3Plus(num_classes=5, **TINY)
  variables, x = _init(model, (2, 33, 33, 3))
  return model, variables, x


@pytest.mark.parametrize("size,feature", [(513, 129), (769, 193)])
def test_real_model_shapes(size, feature):
  """ResNet-101 deep stem, output stride 16: stride-4 logits and features, 304-ch u."""
  model = DeepLabV3Plus(num_classes=19)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  u = jax.eval_shape(functools.partial(model.apply, train=False, method="encode"), variables, x)
  assert logits.shape == (2, feature, feature, 19) and logits.dtype == jnp.float32
  assert u.shape == (2, feature, feature, 304)
  backbone = ResNet(depth=101)
  low, high = jax.eval_shape(
      lambda x: backbone.init_with_output(jax.random.key(0), x, False)[0], x)
  stride16 = -(-size // 16)
  assert low.shape == (2, feature, feature, 256)
  assert high.shape == (2, stride16, stride16, 2048)


# 224 input: the deep stem's ceil-mode pool gives 57 (as PyTorch), the plain stem 56;
# each stride-2 3x3 conv then gives ceil(n / 2).
@pytest.mark.parametrize("depth,output_stride,deep_stem,low_size,high_size,channels",
                         [(50, 8, True, 57, 29, 2048), (34, 16, False, 56, 14, 512),
                          (152, 32, True, 57, 8, 2048)])
def test_backbone_variants(depth, output_stride, deep_stem, low_size, high_size, channels):
  backbone = ResNet(depth=depth, output_stride=output_stride, deep_stem=deep_stem)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  low, high = jax.eval_shape(
      lambda x: backbone.init_with_output(jax.random.key(0), x, False)[0], x)
  assert low.shape == (1, low_size, low_size, channels // 8)
  assert high.shape == (1, high_size, high_size, channels)


def test_stages_compose_to_the_full_model(tiny):
  model, variables, x = tiny
  full = model.apply(variables, x, False)
  u = model.apply(variables, x, False, method="encode")
  v = model.apply(variables, u, False, method="features")
  logits = model.apply(variables, v, method="classify")
  assert u.shape == (2, 9, 9, 19) and v.shape == (2, 9, 9, 16)
  np.testing.assert_array_equal(np.asarray(full), np.asarray(logits))
  assert np.all(np.isfinite(np.asarray(full)))


def test_mixed_batchnorm_routes_perturbed_features_to_aux_parameters(tiny):
  model, variables, x = tiny
  u = model.apply(variables, x, False, method="encode")
  clean = model.apply(variables, u, False, False, method="features")
  perturbed = model.apply(variables, u, False, True, method="features")
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(perturbed))  # same init
  # Change only the auxiliary shift: the clean path must not move, the perturbed one must.
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  aux = params["classifier_bn2"]["aux"]
  params["classifier_bn2"]["aux"] = dict(aux, bias=aux["bias"] + 1.0)
  moved = dict(variables, params=params)
  clean2 = model.apply(moved, u, False, False, method="features")
  perturbed2 = model.apply(moved, u, False, True, method="features")
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(clean2))
  assert np.abs(np.asarray(perturbed2) - np.asarray(perturbed)).max() > 0.5
  # In training, only the auxiliary statistics are updated by a perturbed pass.
  _, updates = model.apply(variables, u, True, True, method="features", mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(1)})
  old = variables["batch_stats"]["classifier_bn1"]
  new = updates["batch_stats"]["classifier_bn1"]
  np.testing.assert_array_equal(np.asarray(old["main"]["mean"]), np.asarray(new["main"]["mean"]))
  assert not np.allclose(np.asarray(old["aux"]["mean"]), np.asarray(new["aux"]["mean"]))


def test_dropout2d_drops_whole_channels():
  x = jnp.ones((4, 9, 7, 32))
  y = np.asarray(dropout2d(0.5).apply({}, x, deterministic=False,
                                      rngs={"dropout": jax.random.key(0)}))
  per_channel = y[:, :1, :1, :]
  # Each (sample, channel) is all zero or all 1 / (1 - p) = 2 over the whole plane.
  np.testing.assert_array_equal(y, np.broadcast_to(per_channel, y.shape))
  assert set(np.unique(per_channel)) == {0.0, 2.0}
  assert 0.3 < (per_channel == 0).mean() < 0.7
  np.testing.assert_array_equal(
      np.asarray(dropout2d(0.5).apply({}, x, deterministic=True)), np.asarray(x))


def test_model_dropout_is_active_only_in_training(tiny):
  _, variables, x = tiny
  model = DeepLabV3Plus(num_classes=5, dropout_rate=0.5, **TINY)
  u = model.apply(variables, x, False, method="encode")
  run = lambda key: np.asarray(model.apply(variables, u, True, method="features",
                                           mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.key(key)})[0])
  assert not np.array_equal(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))
  np.testing.assert_array_equal(np.asarray(model.apply(variables, u, False, method="features")),
                                np.asarray(model.apply(variables, u, False, method="features")))


def test_cross_replica_batchnorm_equals_batchnorm_on_the_concatenated_batch(tiny):
  n_dev = 4
  assert jax.local_device_count() >= n_dev, "tests/conftest.py fakes 4 CPU devices"
  local = DeepLabV3Plus(num_classes=5, dropout_rate=0.0, **TINY)
  synced = DeepLabV3Plus(num_classes=5, dropout_rate=0.0, axis_name="batch", **TINY)
  _, variables, _ = tiny
  x = jnp.asarray(np.random.RandomState(5).randn(8, 33, 33, 3).astype(np.float32))

  def train_apply(model, variables, x):
    return model.apply(variables, x, True, mutable=["batch_stats"])

  ref_logits, ref_updates = jax.jit(functools.partial(train_apply, local))(variables, x)
  shards = x.reshape(n_dev, 2, *x.shape[1:])
  logits, updates = jax.pmap(functools.partial(train_apply, synced), axis_name="batch",
                             in_axes=(None, 0))(variables, shards)
  np.testing.assert_allclose(np.asarray(logits).reshape(ref_logits.shape),
                             np.asarray(ref_logits), rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
    got = np.asarray(got)
    assert np.all(got == got[:1]), "running statistics must be identical on every device"
    np.testing.assert_allclose(got[0], np.asarray(want), rtol=1e-4, atol=1e-5)
  # Without synchronisation the per-device statistics differ: the test above can fail.
  unsynced, _ = jax.pmap(functools.partial(train_apply, local), in_axes=(None, 0))(variables, shards)
  assert np.abs(np.asarray(unsynced).reshape(ref_logits.shape) - np.asarray(ref_logits)).max() > 1e-3


def test_bfloat16_compute_keeps_float32_parameters(tiny):
  model32, variables, x = tiny
  model16 = DeepLabV3Plus(num_classes=5, dtype=jnp.bfloat16, **TINY)
  v16 = jax.eval_shape(functools.partial(model16.init, train=False), jax.random.key(0), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v16))
  u16 = model16.apply(variables, x, False, method="encode")
  assert u16.dtype == jnp.bfloat16
  out16 = model16.apply(variables, x, False)
  out32 = model32.apply(variables, x, False)
  assert out16.dtype == jnp.float32
  scale = np.abs(np.asarray(out32)).max()
  assert np.abs(np.asarray(out16) - np.asarray(out32)).max() < 0.1 * scale


# 1 x 1 convolutions as matrix products: the same function as the convolution.


@pytest.mark.parametrize("stride,use_bias,size", [(1, False, (7, 9)), (2, False, (7, 9)),
                                                  (2, True, (8, 5)), (1, True, (5, 5))])
def test_pointwise_conv_equals_the_convolution_in_values_and_gradients(stride, use_bias, size):
  rng = np.random.RandomState(stride)
  x = jnp.asarray(rng.randn(2, *size, 6).astype(np.float32))
  ours = conv(4, 1, stride, use_bias=use_bias)
  flax_conv = nn.Conv(4, (1, 1), strides=(stride, stride), padding=((0, 0), (0, 0)),
                      use_bias=use_bias)
  params = ours.init(jax.random.key(0), x)
  # nn.Conv's parameter tree: checkpoints and converted weights load either way.
  assert (jax.tree.structure(flax_conv.init(jax.random.key(0), x))
          == jax.tree.structure(params))
  if use_bias:
    params = {"params": {**params["params"], "bias": jnp.arange(4.0)}}
  # The definition in float64: out[n, i, j] = x[n, s*i, s*j] @ W (+ b).
  kernel = np.asarray(params["params"]["kernel"], np.float64)
  want = np.asarray(x, np.float64)[:, ::stride, ::stride] @ kernel[0, 0]
  if use_bias:
    want = want + np.arange(4.0)
  np.testing.assert_allclose(ours.apply(params, x), want, rtol=1e-5, atol=1e-5)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)))

  got = jax.grad(functools.partial(loss, ours), argnums=(0, 1))(params, x)
  ref = jax.grad(functools.partial(loss, flax_conv), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# Dilated convolution as space-to-batch: the same function as the dilated kernel.


def _numpy_dilated_conv(x, kernel, rate):
  """Direct sum over the k x k taps of a zero-padded input (float64): the definition."""
  k = kernel.shape[0]
  pad = rate * (k // 2)
  n, h, w, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      window = xp[:, i * rate:i * rate + h, j * rate:j * rate + w]
      out += window @ kernel[i, j].astype(np.float64)
  return out


@pytest.mark.parametrize("shape,rate", [((2, 13, 17, 3), 1), ((2, 13, 17, 3), 2),
                                        ((1, 9, 9, 4), 3), ((2, 33, 33, 5), 6),
                                        ((1, 17, 17, 2), 12), ((1, 17, 11, 2), 18)])
def test_space_to_batch_conv_equals_the_dilated_convolution(shape, rate):
  rng = np.random.RandomState(rate)
  x = rng.randn(*shape).astype(np.float32)
  kernel = rng.randn(3, 3, shape[-1], 4).astype(np.float32)
  ours = jax.jit(space_to_batch_conv, static_argnums=2)(x, kernel, rate)
  np.testing.assert_allclose(ours, _numpy_dilated_conv(x, kernel, rate), rtol=1e-5, atol=1e-5)


def test_aspp_space_to_batch_matches_dilated_in_values_and_gradients():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 11, 14, 8).astype(np.float32))
  dilated = ASPP(features=6, rates=(2, 3, 5))
  variables = dilated.init(jax.random.key(0), x, False)
  s2b = ASPP(features=6, rates=(2, 3, 5), atrous_impl="space_to_batch")
  # The same parameter tree: checkpoints load into either implementation.
  assert (jax.tree.structure(s2b.init(jax.random.key(0), x, False))
          == jax.tree.structure(variables))

  def loss(module, params, x):
    y, _ = module.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  grad_fn = jax.value_and_grad(loss, argnums=(1, 2))
  l1, g1 = grad_fn(dilated, variables["params"], x)
  l2, g2 = grad_fn(s2b, variables["params"], x)
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="atrous_impl"):
    ASPP(features=6, atrous_impl="winograd").init(jax.random.key(0), x, False)
