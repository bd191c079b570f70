"""Model options of the other methods (DGCL): multi-grid dilations, the projection head,
the auxiliary head on stage 3, plain BatchNorms in the classifier block."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.resnet import ResNet


def _three_by_three_dilations(module, variables, x):
  """rhs_dilation of every 3x3 convolution, in the order the network runs them."""
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, False))(variables, x)
  found = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        if tuple(eqn.invars[1].aval.shape[:2]) == (3, 3):
          found.append(tuple(eqn.params["rhs_dilation"]))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        visit(sub)
  visit(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize("output_stride, expected", [(16, (2, 4, 8)), (8, (4, 8, 16))])
def test_multi_grid_gives_the_releases_last_stage_dilations(output_stride, expected):
  """DGCL's backbone (grid (2, 2, 4)): VOC at stride 16 dilates the last stage's blocks
  by (2, 4, 8), Cityscapes at stride 8 by (4, 8, 16) (the spec's values)."""
  net = ResNet(depth=50, width=1 / 16, output_stride=output_stride, multi_grid=(2, 2, 4))
  x = jnp.zeros((1, 64, 64, 3))
  variables = net.init(jax.random.key(0), x, False)
  dilations = _three_by_three_dilations(net, variables, x)
  assert [d[0] for d in dilations[-3:]] == list(expected)
  plain = ResNet(depth=50, width=1 / 16, output_stride=output_stride)
  plain_dilations = _three_by_three_dilations(plain, variables, x)
  assert plain_dilations[:-3] == dilations[:-3]          # only the last stage changes
  assert [d[0] for d in plain_dilations[-3:]] == [expected[0] // 2, expected[1] // 2,
                                                  expected[1] // 2]
  with pytest.raises(ValueError, match="one factor per block of the last stage"):
    ResNet(depth=50, width=1 / 16, multi_grid=(1, 2)).init(jax.random.key(0), x, False)


def _model(**kw):
  return DeepLabV3Plus(num_classes=5, depth=18, width=1 / 8, aspp_rates=(1, 2, 3), **kw)


def test_projection_head_is_linear_batchnorm_relu_linear_per_pixel():
  model = _model(projection_dim=12)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, False)
  v = model.apply(variables, model.apply(variables, x, False, method="encode"), False,
                  method="features")
  rep, _ = model.apply(variables, v, True, method="project", mutable=["batch_stats"])
  # NumPy from the spec: every pixel a row; BatchNorm1d statistics over all rows.
  p = jax.tree.map(np.asarray, variables["params"])
  rows = np.asarray(v, np.float64).reshape(-1, v.shape[-1])
  h = rows @ p["projection_conv1"]["kernel"][0, 0] + p["projection_conv1"]["bias"]
  h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
  h = h * p["projection_bn"]["scale"] + p["projection_bn"]["bias"]
  h = np.maximum(h, 0) @ p["projection_conv2"]["kernel"][0, 0] + p["projection_conv2"]["bias"]
  np.testing.assert_allclose(np.asarray(rep).reshape(-1, 12), h, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="projection_dim > 0"):
    _model().apply(_model().init(jax.random.key(0), x, False), v, False, method="project")


def test_aux_head_reads_stage_3_only():
  model = _model(aux_head=True, output_stride=16)
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, False)
  u, aux = model.apply(variables, x, False, method="encode_with_aux")
  _, layer3, _ = model.apply(variables, x, False,
                             method=lambda m, x, t: m.backbone(x, t, with_layer3=True))
  assert aux.shape == (2,) + layer3.shape[1:3] + (5,) and aux.dtype == jnp.float32
  np.testing.assert_array_equal(u, model.apply(variables, x, False, method="encode"))
  grads = jax.grad(lambda p: jnp.sum(model.apply(
      {**variables, "params": p}, x, False, method="encode_with_aux")[1]))(variables["params"])
  backbone = grads["backbone"]
  assert all(np.all(g == 0) for name, sub in backbone.items() if name.startswith("layer4")
             for g in jax.tree.leaves(sub))
  assert any(np.any(g != 0) for g in jax.tree.leaves(backbone["layer3_1"]))


def test_plain_classifier_batchnorms_have_no_auxiliary_set():
  model = _model(mixed_bn=False)
  x = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, False)
  assert sorted(variables["params"]["classifier_bn1"]) == ["bias", "scale"]
  assert "aux" in _model().init(jax.random.key(0), x, False)["params"]["classifier_bn1"]
  u = model.apply(variables, x, False, method="encode")
  with pytest.raises(ValueError, match="mixed_bn=True"):
    model.apply(variables, u, False, True, method="features")


def test_reco_decoder_and_representation_head_match_torch_layers():
  """CSS's decoder from its spec in PyTorch: on u, the classifier 3x3 conv (no bias), BN,
  ReLU, 1x1 conv with bias; in parallel the representation head 3x3 conv, BN, ReLU, 1x1
  conv with bias; the ASPP concatenation projected by a 1x1 conv."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  model = _model(decoder="reco", mixed_bn=False, dropout_rate=0.0, projection_dim=6,
                 projection_on="decoder_input")
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, False)
  p = jax.tree.map(np.asarray, variables["params"])
  assert p["head_conv"]["kernel"].shape[:2] == (1, 1) and "classifier_conv2" not in p
  assert "bias" not in p["classifier_conv1"] and "bias" not in p["low_conv"]
  u = model.apply(variables, x, False, method="encode")
  (v, logits), _ = model.apply(
      variables, u, True, method=lambda m, u, t: (m.features(u, t), m.classify(m.features(u, t))),
      mutable=["batch_stats"])
  rep, _ = model.apply(variables, u, True, method="project", mutable=["batch_stats"])

  t = lambda a: torch.tensor(np.asarray(a, np.float64))
  conv = lambda y, k, b=None: F.conv2d(y, t(k).permute(3, 2, 0, 1), None if b is None else t(b),
                                       padding=k.shape[0] // 2)
  bn = lambda y, q: F.batch_norm(y, None, None, t(q["scale"]), t(q["bias"]), training=True,
                                 eps=1e-5)
  tu = t(u).permute(0, 3, 1, 2)
  hidden = F.relu(bn(conv(tu, p["classifier_conv1"]["kernel"]), p["classifier_bn1"]))
  want_logits = conv(hidden, p["final"]["kernel"], p["final"]["bias"])
  want_rep = conv(F.relu(bn(conv(tu, p["projection_conv1"]["kernel"]), p["projection_bn"])),
                  p["projection_conv2"]["kernel"], p["projection_conv2"]["bias"])
  to_nhwc = lambda y: y.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(v), to_nhwc(hidden), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(logits), to_nhwc(want_logits), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(rep), to_nhwc(want_rep), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="model.decoder must be one of"):
    _model(decoder="unet").init(jax.random.key(0), x, False)
