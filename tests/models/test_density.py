"""Feature density, flow loss and pixel sampler against hand computations."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from ddfp_jax.models import density
from ddfp_jax.models.flow import CouplingFlow

K = 4
D = 8
HIDDEN = 16


@pytest.fixture(scope='module')
def setup():
  model = density.FeatureDensity(num_classes=K, num_blocks=2, hidden=HIDDEN)
  v = jax.random.normal(jax.random.key(0), (12, D))
  variables = model.init(jax.random.key(1), v)
  # Stretch the flow away from the identity so log|det J| matters.
  variables = {'params': {
      'flow': jax.tree.map(lambda p: 5.0 * p, variables['params']['flow']),
      'means': variables['params']['means'],
  }}
  return model, variables, v


def _by_hand(variables, v):
  """φ(v), log|det J| from the bare flow and float64 per-component log N(φ(v) | μ_k, I)."""
  flow = CouplingFlow(num_blocks=2, hidden=HIDDEN)
  z, log_det = flow.apply({'params': variables['params']['flow']}, v)
  z = np.asarray(z, np.float64)
  means = np.asarray(variables['params']['means'], np.float64)
  comp = -0.5 * (D * np.log(2 * np.pi) + ((z[:, None] - means[None]) ** 2).sum(-1))
  return comp, np.asarray(log_det, np.float64)


def test_params_layout(setup):
  model, variables, v = setup
  assert set(variables['params']) == {'flow', 'means'}
  assert variables['params']['means'].shape == (K, D)


def test_log_prob_is_base_mixture_plus_log_det(setup):
  model, variables, v = setup
  comp, log_det = _by_hand(variables, v)
  # The Jacobian term is far from negligible for the rows taken together.
  assert np.abs(log_det).mean() > 0.5
  expected = logsumexp(comp - np.log(K), axis=1) + log_det
  np.testing.assert_allclose(model.apply(variables, v, method=model.log_prob), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(model.apply(variables, v), expected, rtol=1e-5)
  grid = model.apply(variables, v.reshape(3, 4, D), method=model.log_prob)
  assert grid.shape == (3, 4)
  np.testing.assert_allclose(grid.reshape(-1), expected, rtol=1e-5)


def test_class_logits(setup):
  model, variables, v = setup
  comp, _ = _by_hand(variables, v)
  logits = model.apply(variables, v, method=model.class_logits)
  np.testing.assert_allclose(logits, comp - np.log(K), rtol=1e-5)


LABELS = np.array([0, 3, density.UNLABELED, 255, 1, density.UNLABELED, 255, 2, 2,
                   density.UNLABELED, 0, 255])


def _np_nll(comp, log_det, labels, weights=None):
  mixture = logsumexp(comp - np.log(K), axis=1)
  total, count = 0.0, 0.0
  for i, label in enumerate(labels):
    w = 1.0 if weights is None else weights[i]
    if label == density.IGNORE_LABEL or w == 0:
      continue
    ll = (mixture[i] if label == density.UNLABELED else comp[i, label]) + log_det[i]
    total += w * ll
    count += w
  return -total / max(count, 1.0)


def test_nll_matches_hand_computation(setup):
  model, variables, v = setup
  comp, log_det = _by_hand(variables, v)
  nll = model.apply(variables, v, jnp.asarray(LABELS), method=model.nll)
  np.testing.assert_allclose(nll, _np_nll(comp, log_det, LABELS), rtol=1e-5)

  weights = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1], np.float32)
  nll_w = model.apply(variables, v, jnp.asarray(LABELS), jnp.asarray(weights),
                      method=model.nll)
  np.testing.assert_allclose(nll_w, _np_nll(comp, log_det, LABELS, weights), rtol=1e-5)


def test_nll_ignores_ignored_rows(setup):
  model, variables, v = setup
  labels = jnp.asarray(LABELS)
  nll_fn = jax.jit(lambda params, v: model.apply(params, v, labels, method=model.nll))
  base = nll_fn(variables, v)
  ignored = np.flatnonzero(LABELS == 255)
  moved = v.at[ignored].add(3.0)
  np.testing.assert_allclose(nll_fn(variables, moved), base, rtol=1e-6)
  # Even garbage in an ignored row must not leak into the loss or the gradients.
  garbage = v.at[ignored[0]].set(jnp.nan).at[ignored[1]].set(jnp.inf)
  np.testing.assert_allclose(nll_fn(variables, garbage), base, rtol=1e-6)
  grads = jax.grad(nll_fn)(variables, garbage)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  # Moving a counted row does change it (the test above can fail).
  assert abs(float(nll_fn(variables, v.at[0].add(3.0)) - base)) > 1e-3


def test_nll_all_ignored_is_zero(setup):
  model, variables, v = setup
  nll = model.apply(variables, v, jnp.full((12,), 255), method=model.nll)
  assert float(nll) == 0.0


def test_learn_means_switch(setup):
  _, variables, v = setup
  labels = jnp.asarray(LABELS)
  for learn, expect_nonzero in ((True, True), (False, False)):
    model = density.FeatureDensity(num_classes=K, num_blocks=2, hidden=HIDDEN,
                                   learn_means=learn)
    grads = jax.jit(jax.grad(lambda p: model.apply(p, v, labels, method=model.nll)))(
        variables)
    assert bool(jnp.any(grads['params']['means'] != 0)) == expect_nonzero
    assert bool(jnp.any(grads['params']['flow']['blocks_0']['subnet1']['dense_0']['kernel']
                        != 0))


def test_sample_pixels_only_valid_rows_when_enough():
  valid = jax.random.bernoulli(jax.random.key(2), 0.3, (200,))
  n_valid = int(valid.sum())
  assert n_valid > 40
  indices, mask = density.sample_pixels(jax.random.key(3), valid, 40)
  assert indices.shape == (40,) and mask.shape == (40,)
  assert bool(jnp.all(valid[indices])) and bool(jnp.all(mask))
  assert len(np.unique(np.asarray(indices))) == 40


def test_sample_pixels_masks_when_too_few_valid():
  valid = jnp.zeros(100, bool).at[jnp.array([3, 17, 50, 64, 99])].set(True)
  indices, mask = density.sample_pixels(jax.random.key(4), valid, 20)
  assert indices.shape == (20,)
  assert len(np.unique(np.asarray(indices))) == 20
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(valid[indices]))
  assert sorted(np.asarray(indices)[np.asarray(mask)].tolist()) == [3, 17, 50, 64, 99]


def test_sample_pixels_more_samples_than_rows():
  valid = jnp.ones(10, bool).at[2].set(False)
  indices, mask = density.sample_pixels(jax.random.key(5), valid, 32)
  assert indices.shape == (10,)
  assert sorted(np.asarray(indices).tolist()) == list(range(10))
  assert int(mask.sum()) == 9 and not bool(mask[np.flatnonzero(np.asarray(indices) == 2)[0]])


def test_sample_pixels_roughly_uniform():
  valid = jnp.ones(20, bool).at[jnp.array([0, 7, 19])].set(False)
  keys = jax.random.split(jax.random.key(6), 4000)
  indices, mask = jax.jit(jax.vmap(lambda k: density.sample_pixels(k, valid, 5)))(keys)
  assert bool(jnp.all(mask))
  counts = np.bincount(np.asarray(indices).ravel(), minlength=20) / 4000
  # Each of the 17 valid rows is picked with probability 5/17 ≈ 0.294; the standard error
  # over 4000 draws is ~0.007, so 0.04 is a loose bound that a biased sampler (e.g. one
  # preferring the first rows) still fails.
  np.testing.assert_allclose(counts[np.asarray(valid)], 5 / 17, atol=0.04)
  assert counts[0] == counts[7] == counts[19] == 0


def test_sample_pixels_one_compile_for_any_mask():
  sample = jax.jit(chex.assert_max_traces(density.sample_pixels, n=1), static_argnums=2)
  for seed, p in enumerate((0.05, 0.5, 0.95)):
    valid = jax.random.bernoulli(jax.random.key(seed), p, (64,))
    indices, mask = sample(jax.random.key(10 + seed), valid, 16)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(valid[indices]))
    assert int(mask.sum()) == min(16, int(valid.sum()))
