"""Feature perturbations: known geometric and analytic properties of each kind."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.density import FeatureDensity
from ddfp_jax.methods.perturbations import (KINDS, PerturbationConfig, PerturbationSite, perturb)

N, H, W = 2, 12, 12
U_CHANNELS = 19   # classifier input of the width-1/16 model: 3 (low) + 16 (head)
V_CHANNELS = 16   # pixel features of the width-1/16 model


@pytest.fixture(scope="module")
def setup():
  model = DeepLabV3Plus(num_classes=5, depth=18, width=1 / 16, dropout_rate=0.0)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  density = FeatureDensity(num_classes=5, hidden=32)
  density_params = density.init(jax.random.key(1), jnp.zeros((4, V_CHANNELS)))
  rs = np.random.RandomState(0)
  u = jnp.asarray(rs.randn(N, H, W, U_CHANNELS).astype(np.float32))
  confident = np.zeros((N, H, W), bool)
  for n, i, j in [(0, 2, 3), (0, 9, 9), (1, 5, 0), (1, 11, 11)]:
    confident[n, i, j] = True
  return model, variables, density, density_params, u, jnp.asarray(confident)


def _site(setup, train, confident=None, at_features=False):
  model, variables, density, density_params, _, default_confident = setup

  def to_features(x):
    v, _ = model.apply(variables, x, train, True, method="features", mutable=["batch_stats"])
    return v

  return PerturbationSite(
      to_features=(lambda v: v) if at_features else to_features,
      to_logits=lambda v: model.apply(variables, v, method="classify"),
      log_density=lambda v: density.apply(density_params, v, method="log_prob"),
      confident=default_confident if confident is None else confident)


def _pixel_norms(delta):
  return np.sqrt(np.sum(np.square(np.asarray(delta, np.float64)), axis=-1))


def test_density_descending_support_is_the_receptive_field_of_confident_pixels(setup):
  *_, u, confident = setup
  site = _site(setup, train=False)
  config = PerturbationConfig(kind="density_descending", eps=4.0)
  delta = jax.jit(lambda x: perturb(x, site, config, jax.random.key(0)) - x)(u)
  norms = _pixel_norms(delta)
  # Two 3x3 convs: a pixel of u reaches the features of pixels up to 2 away (Chebyshev).
  influence = scipy.ndimage.binary_dilation(
      np.asarray(confident), structure=np.ones((1, 5, 5), bool))
  np.testing.assert_allclose(norms[influence], 4.0, rtol=1e-5)
  np.testing.assert_array_equal(norms[~influence], 0.0)


def test_density_descending_in_train_mode_reaches_every_pixel_through_batch_statistics(setup):
  # With batch statistics (the release's train-mode classifier), every pixel influences
  # every normalised feature, so every pixel gets a direction of norm eps.
  *_, u, _ = setup
  site = _site(setup, train=True)
  delta = perturb(u, site, PerturbationConfig(eps=2.5), jax.random.key(0)) - u
  np.testing.assert_allclose(_pixel_norms(delta), 2.5, rtol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_density_descending_lowers_the_density_of_confident_features(setup, train):
  *_, u, confident = setup
  site = _site(setup, train=train)
  mask = np.asarray(confident)
  before = np.asarray(site.log_density(site.to_features(u)))[mask].mean()
  for eps in (0.5, 4.0):
    pushed = perturb(u, site, PerturbationConfig(eps=eps), jax.random.key(0))
    after = np.asarray(site.log_density(site.to_features(pushed)))[mask].mean()
    assert after < before, (eps, before, after)


def test_density_descending_on_features_follows_each_pixels_own_score(setup):
  """Paper variant (perturb v): per confident pixel, delta = -eps * unit score, computed
  here independently per pixel with forward-mode differentiation."""
  model, variables, density, density_params, u, confident = setup
  v = model.apply(variables, u, False, True, method="features")
  site = _site(setup, train=False, at_features=True)
  delta = np.asarray(perturb(v, site, PerturbationConfig(eps=4.0), jax.random.key(0)) - v)

  def log_p(vec):
    return density.apply(density_params, vec[None], method="log_prob")[0]

  mask = np.asarray(confident)
  for n, i, j in zip(*np.nonzero(mask)):
    score = np.asarray(jax.jacfwd(log_p)(v[n, i, j]), np.float64)
    np.testing.assert_allclose(delta[n, i, j], -4.0 * score / np.linalg.norm(score),
                               rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(delta[~mask], 0.0)


def test_density_descending_is_zero_without_confident_pixels(setup):
  *_, u, confident = setup
  site = _site(setup, train=False, confident=jnp.zeros_like(confident))
  out = perturb(u, site, PerturbationConfig(), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(u))


def test_perturbation_is_a_constant_shift_for_the_gradient(setup):
  """The student learns through the perturbed branch: d(x + delta)/dx = I."""
  *_, u, _ = setup
  site = _site(setup, train=False)
  for kind in ("density_descending", "random", "vat"):
    config = PerturbationConfig(kind=kind)
    w = jnp.asarray(np.random.RandomState(1).randn(*u.shape).astype(np.float32))
    grad = jax.grad(lambda x: jnp.sum(w * perturb(x, site, config, jax.random.key(2))))(u)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w), rtol=1e-6, err_msg=kind)


def test_random_direction_has_norm_eps_at_every_pixel(setup):
  *_, u, _ = setup
  site = _site(setup, train=False)
  out = perturb(u, site, PerturbationConfig(kind="random", eps=3.0), jax.random.key(5))
  np.testing.assert_allclose(_pixel_norms(out - u), 3.0, rtol=1e-5)
  other = perturb(u, site, PerturbationConfig(kind="random", eps=3.0), jax.random.key(6))
  assert not np.allclose(np.asarray(out), np.asarray(other))


def test_uniform_noise_is_cct_multiplicative_noise_shared_by_the_batch(setup):
  *_, u, _ = setup
  site = _site(setup, train=False)
  x = jnp.abs(u) + 0.5
  out = perturb(x, site, PerturbationConfig(kind="uniform_noise", uniform_range=0.3),
                jax.random.key(0))
  factor = np.asarray(out) / np.asarray(x)
  assert factor.min() >= 0.7 - 1e-6 and factor.max() <= 1.3 + 1e-6
  assert factor.std() > 0.1
  np.testing.assert_allclose(factor[0], factor[1], rtol=1e-6)


def test_channel_dropout_drops_half_the_channels_of_each_sample(setup):
  *_, u, _ = setup
  site = _site(setup, train=False)
  x = jnp.abs(u) + 0.5
  out = np.asarray(perturb(x, site, PerturbationConfig(kind="channel_dropout"),
                           jax.random.key(0)))
  factor = out / np.asarray(x)
  per_channel = factor[:, :1, :1, :]
  np.testing.assert_allclose(factor, np.broadcast_to(per_channel, factor.shape), rtol=1e-6)
  assert set(np.round(np.unique(per_channel), 5)) == {0.0, 2.0}
  assert 0.2 < (per_channel == 0).mean() < 0.8


def test_vat_direction_changes_predictions_more_than_random_directions(setup):
  *_, u, _ = setup
  site = _site(setup, train=False)
  eps = 8.0
  per_sample = (1, 2, 3)

  def kl(x_pert):
    p = jax.nn.softmax(site.to_logits(site.to_features(u)))
    log_q = jax.nn.log_softmax(site.to_logits(site.to_features(x_pert)))
    return float(jnp.sum(p * (jnp.log(p) - log_q)))

  adversarial = perturb(u, site, PerturbationConfig(kind="vat", eps=eps), jax.random.key(0))
  norms = np.sqrt(np.sum(np.square(np.asarray(adversarial - u)), axis=per_sample))
  np.testing.assert_allclose(norms, eps, rtol=1e-5)
  random_kls = []
  for seed in range(8):
    d = jax.random.normal(jax.random.key(100 + seed), u.shape)
    d = d / jnp.sqrt(jnp.sum(d * d, axis=per_sample, keepdims=True))
    random_kls.append(kl(u + eps * d))
  assert kl(adversarial) > 3 * max(random_kls), (kl(adversarial), random_kls)


def test_none_is_the_identity_and_unknown_kinds_are_rejected(setup):
  *_, u, _ = setup
  site = _site(setup, train=False)
  out = perturb(u, site, PerturbationConfig(kind="none"), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(u))
  with pytest.raises(ValueError, match="Unknown perturbation kind 'fgsm'"):
    PerturbationConfig(kind="fgsm")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_jits_with_one_signature_and_keeps_dtype(setup, kind):
  *_, u, _ = setup
  site = _site(setup, train=True)
  x = u.astype(jnp.bfloat16)
  out = jax.jit(lambda x, key: perturb(x, site, PerturbationConfig(kind=kind), key))(
      x, jax.random.key(0))
  assert out.shape == x.shape and out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))


def test_l2_normalize_matches_torch_and_has_a_finite_gradient_at_zero():
  """torch.nn.functional.normalize's values and gradient, a zero row included (where a
  square root taken before the maximum would give 0 * inf = NaN)."""
  torch = pytest.importorskip("torch")
  from ddfp_jax.methods.perturbations import l2_normalize
  g = np.random.RandomState(0).randn(4, 5).astype(np.float32)
  g[1] = 0.0
  weights = np.random.RandomState(1).randn(4, 5).astype(np.float32)
  value, grad = jax.value_and_grad(lambda x: jnp.sum(l2_normalize(x, axis=-1) * weights))(
      jnp.asarray(g))
  t = torch.tensor(g, dtype=torch.float64, requires_grad=True)
  want = torch.sum(torch.nn.functional.normalize(t, dim=-1) * torch.tensor(weights, dtype=torch.float64))
  want.backward()
  assert float(value) == pytest.approx(float(want.detach()), rel=1e-5)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5)
