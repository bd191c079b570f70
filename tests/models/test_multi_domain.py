"""USSS's multi-domain model: shared encoder, per-domain heads, embedding head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models import multi_domain as md
from ddfp_jax.models.deeplab import DeepLabV3Plus

X = jnp.asarray(np.random.RandomState(0).rand(2, 32, 40, 3), jnp.float32)


def _init(model):
  return model.init(jax.random.key(0), X, False)


@pytest.mark.parametrize("none_class", [True, False])
def test_drn_encoder_heads_per_domain_and_embedding_at_stride_8(none_class):
  encoder = md.build_encoder("drn", drn_depth=22, width=1 / 8)
  model = md.MultiDomainSegmenter(encoder, num_classes=(3, 4), embedding_dim=16,
                                  none_class=none_class)
  variables = _init(model)
  params = variables["params"]
  extra = 1 if none_class else 0
  assert params["head_0"]["kernel"].shape == (1, 1, 64, 3 + extra)
  assert params["head_1"]["kernel"].shape == (1, 1, 64, 4 + extra)
  assert params["embedding"]["kernel"].shape == (1, 1, 64, 16)
  for head in ("head_0", "head_1", "embedding"):                  # the release's zeros
    assert not np.any(np.asarray(params[head]["bias"]))
  f = model.apply(variables, X, False, method="encode")
  assert f.shape == (2, 4, 5, 64)
  for d, k in enumerate((3, 4)):
    logits = model.apply(variables, f, d, method="classify")
    assert logits.shape == (2, 4, 5, k + extra) and logits.dtype == jnp.float32
    # The head is a 1 x 1 convolution with bias over f.
    want = np.einsum("nhwc,ck->nhwk", f, params[f"head_{d}"]["kernel"][0, 0])
    np.testing.assert_allclose(logits, want + params[f"head_{d}"]["bias"], rtol=1e-4,
                               atol=1e-5)
  assert model.apply(variables, f, method="embed").shape == (2, 4, 5, 16)
  np.testing.assert_array_equal(model.apply(variables, X, False, 1),
                                model.apply(variables, f, 1, method="classify"))


def test_deeplab_encoder_stops_at_the_pixel_features():
  deeplab = DeepLabV3Plus(num_classes=1, depth=18, width=1 / 8, output_stride=8,
                          aspp_rates=(1, 2, 3), mixed_bn=False)
  model = md.MultiDomainSegmenter(md.build_encoder("deeplab", deeplab=deeplab),
                                  num_classes=(5, 2), embedding_dim=8)
  variables = _init(model)
  inner = variables["params"]["encoder"]["model"]
  assert "final" not in inner and "backbone" in inner
  f = model.apply(variables, X, False, method="encode")
  inner_vars = {"params": inner, "batch_stats": variables["batch_stats"]["encoder"]["model"]}
  u = deeplab.apply(inner_vars, X, False, method="encode")
  np.testing.assert_array_equal(f, deeplab.apply(inner_vars, u, False, method="features"))
  assert f.shape == (2, 9, 11, 32)                     # stride 4 (the deep stem's ceil)
  assert model.apply(variables, f, 0, method="classify").shape == (2, 9, 11, 6)


def test_heads_start_as_the_release_initialises_them():
  """Weights N(0, 2 / n), n the output channels of the 1 x 1 kernel; biases 0."""
  kernel = md.release_head_init(20)(jax.random.key(1), (1, 1, 512, 20))
  assert float(jnp.std(kernel)) == pytest.approx((2 / 20) ** 0.5, rel=0.05)
  assert abs(float(jnp.mean(kernel))) < 0.02


def test_unknown_encoder_is_refused():
  with pytest.raises(ValueError, match="must be one of"):
    md.build_encoder("vgg")
