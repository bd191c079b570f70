"""DeepLabV3+ / ResNet: shapes, stage composition, cross-replica BN, dropout, dtypes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models.deeplab import ASPP, DeepLabV3Plus
from ddfp_jax.models.layers import conv, dropout2d, shifted_taps_conv, space_to_batch_conv
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


def _numpy_dilated_conv_grads(x, kernel, rate, g):
  """(dL/dx, dL/dkernel) of L = sum(g * conv(x, kernel)), float64, from the same taps: each
  tap's window receives g @ kernel[i, j]^T, and kernel[i, j] the window^T @ g."""
  k = kernel.shape[0]
  pad = rate * (k // 2)
  n, h, w, c = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dxp = np.zeros_like(xp)
  dk = np.zeros(kernel.shape)
  g = g.astype(np.float64)
  for i in range(k):
    for j in range(k):
      rows, cols = slice(i * rate, i * rate + h), slice(j * rate, j * rate + w)
      dxp[:, rows, cols] += g @ kernel[i, j].astype(np.float64).T
      dk[i, j] = np.einsum("nhwc,nhwf->cf", xp[:, rows, cols], g)
  return dxp[:, pad:pad + h, pad:pad + w], dk


DILATED_CASES = [((2, 13, 17, 3), 1), ((2, 13, 17, 3), 2), ((1, 9, 9, 4), 3),
                 ((2, 33, 33, 5), 6), ((1, 17, 17, 2), 12), ((1, 17, 11, 2), 18)]
FORMS = {"space_to_batch": space_to_batch_conv, "shifted": shifted_taps_conv}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("shape,rate", DILATED_CASES)
def test_undilated_forms_equal_the_dilated_convolution_in_values_and_gradients(
    form, shape, rate):
  """Rates 1-18, maps smaller than the rate included (17 x 11 at 18: the outer taps read
  only padding), against the float64 definition."""
  rng = np.random.RandomState(rate)
  x = rng.randn(*shape).astype(np.float32)
  kernel = rng.randn(3, 3, shape[-1], 4).astype(np.float32)
  g = rng.randn(*shape[:3], 4).astype(np.float32)
  fn = functools.partial(FORMS[form], rate=rate)
  y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(kernel))
  np.testing.assert_allclose(y, _numpy_dilated_conv(x, kernel, rate), rtol=1e-5, atol=1e-5)
  dx, dk = vjp(jnp.asarray(g))
  want_dx, want_dk = _numpy_dilated_conv_grads(x, kernel, rate, g)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-3 * np.abs(want_dk).max())


@pytest.mark.parametrize("impl", ["space_to_batch", "shifted"])
def test_undilated_forms_compile_without_a_dilated_kernel(impl):
  """Forward and backward of a rate-6 Conv, as XLA:CPU compiled them: no convolution with
  kernel (rhs) dilation, which XLA:GPU would legalise into a zero-inserted 13 x 13 kernel;
  the "dilated" form, compiled the same way, has one (the check can fail)."""
  x = jnp.ones((1, 20, 20, 4))

  def compiled_hlo(atrous_impl):
    layer = conv(8, 3, 1, 6, atrous_impl=atrous_impl)
    params = layer.init(jax.random.key(0), x)

    def loss(params, x):
      return jnp.sum(jnp.sin(layer.apply(params, x)))
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()

  assert "rhs_dilate" in compiled_hlo("dilated")
  text = compiled_hlo(impl)
  assert "rhs_dilate" not in text
  if impl == "shifted":
    assert "convolution(" not in text


def test_whole_model_shifted_matches_dilated_and_compiles_without_dilated_kernels():
  """At output stride 8 the backbone's last two stages are dilated (2 and 4) besides ASPP:
  "shifted" reaches them too, with the same parameters, values and gradients, and the
  compiled forward holds no dilated kernel. (The backward of the stem's stride-2
  convolutions is itself a convolution with the output gradient dilated by the stride,
  in either form: that is the weight gradient of a strided convolution, which XLA:GPU
  matches as a backward-filter convolution; the per-layer test above checks a dilated
  layer's backward.)"""
  x = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3).astype(np.float32))
  models = {impl: DeepLabV3Plus(num_classes=3, depth=18, width=1 / 16, output_stride=8,
                                aspp_rates=(2, 3, 5), dropout_rate=0.0, atrous_impl=impl)
            for impl in ("dilated", "shifted")}
  variables = models["dilated"].init(jax.random.key(0), x, False)

  def loss(model, params, x):
    y, _ = model.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  results = {}
  for impl, model in models.items():
    grad_fn = jax.jit(jax.value_and_grad(functools.partial(loss, model), argnums=(0, 1)))
    results[impl] = grad_fn(variables["params"], x)
    forward = jax.jit(functools.partial(model.apply, train=False))
    text = forward.lower(variables, x).compile().as_text()
    assert ("rhs_dilate" in text) == (impl == "dilated"), impl
  (l1, g1), (l2, g2) = results["dilated"], results["shifted"]
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("impl", ["space_to_batch", "shifted"])
def test_aspp_undilated_forms_match_dilated_in_values_and_gradients(impl):
  x = jnp.asarray(np.random.RandomState(0).randn(2, 11, 14, 8).astype(np.float32))
  dilated = ASPP(features=6, rates=(2, 3, 5))
  variables = dilated.init(jax.random.key(0), x, False)
  s2b = ASPP(features=6, rates=(2, 3, 5), atrous_impl=impl)
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
