"""GMM base: log-densities against float64 closed forms and distrax's own densities."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from ddfp_jax.models import gmm

K = 5
D = 16


def _np_components(z, means):
  """Naive float64 log N(z | μ_k, I) with an explicit (N, K, D) difference."""
  z = np.asarray(z, np.float64)
  means = np.asarray(means, np.float64)
  sq = ((z[:, None, :] - means[None]) ** 2).sum(-1)
  return -0.5 * (z.shape[-1] * np.log(2 * np.pi) + sq)


def _data(seed=0, n=50):
  key_means, key_z = jax.random.split(jax.random.key(seed))
  means = gmm.init_means(key_means, K, D)
  z = jax.random.normal(key_z, (n, D)) * 1.5
  return z, means


def test_component_log_probs_closed_form_and_distrax():
  z, means = _data()
  comp = gmm.component_log_probs(z, means)
  assert comp.shape == (50, K) and comp.dtype == jnp.float32
  np.testing.assert_allclose(comp, _np_components(z, means), rtol=1e-5)
  for k in range(K):
    normal = distrax.MultivariateNormalDiag(loc=means[k], scale_diag=jnp.ones(D))
    np.testing.assert_allclose(comp[:, k], normal.log_prob(z), rtol=1e-5)


def test_component_log_probs_accurate_near_large_means():
  # ‖z‖² − 2 z·μ + ‖μ‖² cancels badly when z sits next to a far-away mean.
  means = 30.0 * jax.random.normal(jax.random.key(1), (K, D))
  z = means[jnp.arange(40) % K] + 1e-2 * jax.random.normal(jax.random.key(2), (40, D))
  comp = gmm.component_log_probs(z, means)
  np.testing.assert_allclose(comp, _np_components(z, means), rtol=1e-5, atol=1e-2)
  # Nothing can beat the density at the mean itself.
  assert float(jnp.max(comp)) <= -0.5 * D * np.log(2 * np.pi) + 1e-6


def test_leading_shape():
  z, means = _data()
  comp = gmm.component_log_probs(z.reshape(5, 10, D), means)
  assert comp.shape == (5, 10, K)
  np.testing.assert_allclose(comp.reshape(50, K), _np_components(z, means), rtol=1e-5)


def test_uniform_weights():
  _, means = _data()
  np.testing.assert_allclose(jnp.exp(gmm.log_mixture_weights(means)), np.full(K, 1 / K),
                             rtol=1e-6)
  probs = gmm.gmm_distribution(means).mixture_distribution.probs
  np.testing.assert_allclose(probs, np.full(K, 1 / K), rtol=1e-6)


def test_mixture_log_prob_closed_form_and_distrax():
  z, means = _data()
  expected = logsumexp(_np_components(z, means) + np.log(1 / K), axis=1)
  mixture = gmm.mixture_log_prob(z, means)
  np.testing.assert_allclose(mixture, expected, rtol=1e-5)
  np.testing.assert_allclose(mixture, gmm.gmm_distribution(means).log_prob(z), rtol=1e-5)


def test_labeled_log_prob_release_convention():
  z, means = _data(n=8)
  labels = jnp.array([0, 3, 4, -1, 255, 7, -1, 2])
  out = gmm.labeled_log_prob(z, means, labels, unlabeled_label=-1)
  comp = _np_components(z, means)
  mixture = logsumexp(comp + np.log(1 / K), axis=1)
  # Labeled rows: their component without log π_c; unlabeled: mixture; other labels: 0.
  expected = np.array([comp[0, 0], comp[1, 3], comp[2, 4], mixture[3], 0.0, 0.0,
                       mixture[6], comp[7, 2]])
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  assert not np.allclose(out[0], comp[0, 0] + np.log(1 / K), rtol=1e-5)


def test_labeled_log_prob_jits_with_traced_labels():
  z, means = _data(n=8)
  labels = jnp.array([0, 1, 2, 3, 4, -1, 255, 1])
  eager = gmm.labeled_log_prob(z, means, labels, -1)
  jitted = jax.jit(gmm.labeled_log_prob, static_argnums=3)(z, means, labels, -1)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_class_logits():
  _, means = _data()
  labels = jnp.arange(30) % K
  z = means[labels] + 0.1 * jax.random.normal(jax.random.key(3), (30, D))
  logits = gmm.class_logits(z, means)
  np.testing.assert_array_equal(jnp.argmax(logits, -1), labels)
  np.testing.assert_allclose(logits, _np_components(z, means) + np.log(1 / K), rtol=1e-5)


def test_init_means_standard_normal():
  means = gmm.init_means(jax.random.key(4), 21, 256)
  assert means.shape == (21, 256) and means.dtype == jnp.float32
  assert abs(float(means.mean())) < 0.05 and abs(float(means.std()) - 1.0) < 0.05


def test_sampling_follows_the_mixture():
  # Far-apart means: every sample sits next to one mean, each mean gets ~1/K of them.
  means = 20.0 * jnp.eye(K, D)
  samples = gmm.gmm_distribution(means).sample(seed=jax.random.key(5), sample_shape=2000)
  nearest = jnp.argmax(gmm.class_logits(samples, means), -1)
  counts = np.bincount(np.asarray(nearest), minlength=K) / 2000
  np.testing.assert_allclose(counts, np.full(K, 1 / K), atol=0.05)
  offsets = samples - means[nearest]
  assert abs(float(offsets.std()) - 1.0) < 0.05
