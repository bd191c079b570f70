"""Coupling flow: invertibility, exact log-determinant, release conventions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.models import flow

DIM = 8
HIDDEN = 16
NUM_BLOCKS = 3


@pytest.fixture(scope='module')
def far_from_identity():
  """A 3-block flow whose params are scaled up so every coupling really bends space."""
  model = flow.CouplingFlow(num_blocks=NUM_BLOCKS, hidden=HIDDEN, clamp=2.0)
  params = model.init(jax.random.key(0), jnp.zeros((1, DIM)))
  # The 0.05 init is nearly the identity map; ×6 gives log-scales and shifts of order one
  # (log|det J| varies by ~2 nats across rows) while float32 stays well conditioned.
  params = jax.tree.map(lambda p: 6.0 * p, params)
  x = jax.random.normal(jax.random.key(1), (64, DIM))
  return model, params, x


def _np_mlp(layers, u):
  h = np.maximum(u @ layers['dense_0']['kernel'] + layers['dense_0']['bias'], 0.0)
  h = np.maximum(h @ layers['dense_1']['kernel'] + layers['dense_1']['bias'], 0.0)
  return h @ layers['dense_2']['kernel'] + layers['dense_2']['bias']


def _np_flow(params, x, num_blocks, clamp):
  """Float64 NumPy transcription of the spec's equations (section 4 and 8)."""
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), params['params'])
  x = np.asarray(x, np.float64)
  log_det = np.zeros(x.shape[0])
  d1 = x.shape[1] // 2
  for k in range(num_blocks):
    block = params[f'blocks_{k}']
    x1, x2 = x[:, :d1], x[:, d1:]
    a2 = _np_mlp(block['subnet2'], x2)
    s2 = clamp * 0.636 * np.arctan(a2[:, :d1])
    y1 = x1 * np.exp(s2) + a2[:, d1:]
    a1 = _np_mlp(block['subnet1'], y1)
    d2 = x2.shape[1]
    s1 = clamp * 0.636 * np.arctan(a1[:, :d2])
    y2 = x2 * np.exp(s1) + a1[:, d2:]
    log_det += s2.sum(1) + s1.sum(1)
    x = np.concatenate([y1, y2], 1)[:, np.random.RandomState(k).permutation(x.shape[1])]
  return x, log_det


def test_matches_numpy_transcription_of_the_equations(far_from_identity):
  model, params, x = far_from_identity
  z, log_det = jax.jit(model.apply)(params, x)
  z_ref, log_det_ref = _np_flow(params, x, NUM_BLOCKS, 2.0)
  # The test only means something if the coupling is far from the identity.
  assert np.std(log_det_ref) > 0.5 and np.abs(z_ref - np.asarray(x)).max() > 1.0
  np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-4, atol=1e-4)


def test_inverse_round_trip(far_from_identity):
  model, params, x = far_from_identity
  z, _ = model.apply(params, x)
  x_back = model.apply(params, z, method=model.inverse)
  assert float(jnp.max(jnp.abs(x_back - x))) < 1e-4
  z_back, _ = model.apply(params, model.apply(params, z, method=model.inverse))
  assert float(jnp.max(jnp.abs(z_back - z))) < 1e-4


def test_log_det_equals_slogdet_of_jacobian(far_from_identity):
  model, params, x = far_from_identity

  def f(row):
    return model.apply(params, row[None])[0][0]

  jac = jax.jit(jax.vmap(jax.jacfwd(f)))(x[:6])
  _, log_abs_det = jnp.linalg.slogdet(jac)
  _, log_det = model.apply(params, x[:6])
  assert float(jnp.std(log_det)) > 0.5
  np.testing.assert_allclose(log_det, log_abs_det, rtol=1e-4, atol=1e-3)


def test_any_leading_shape(far_from_identity):
  model, params, x = far_from_identity
  z, log_det = model.apply(params, x)
  z_grid, log_det_grid = model.apply(params, x.reshape(2, 4, 8, DIM))
  assert z_grid.shape == (2, 4, 8, DIM) and log_det_grid.shape == (2, 4, 8)
  np.testing.assert_allclose(z_grid.reshape(-1, DIM), z, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(log_det_grid.reshape(-1), log_det, rtol=1e-6, atol=1e-6)
  x_back = model.apply(params, z_grid, method=model.inverse)
  np.testing.assert_allclose(x_back, x.reshape(2, 4, 8, DIM), atol=1e-4)


def test_permutation_is_freia_global_seeded_one():
  # FrEIA's PermuteRandom(seed=k) does np.random.seed(k); np.random.permutation(d).
  state = np.random.get_state()
  try:
    for k in range(3):
      np.random.seed(k)
      expected = np.random.permutation(256)
      np.testing.assert_array_equal(flow.channel_permutation(k, 256), expected)
  finally:
    np.random.set_state(state)
  assert not np.array_equal(flow.channel_permutation(0, 256), flow.channel_permutation(1, 256))


def test_soft_clamp_bound():
  s = jnp.array([-1e30, -1e4, -3.0, 0.0, 0.5, 1e4, 1e30])
  clamped = flow.soft_clamp(s, 2.0)
  assert bool(jnp.all(jnp.abs(clamped) < 2.0))
  # ATAN activation: clamp · 0.636 · atan(s), not atan(s / clamp) (an older FrEIA's).
  np.testing.assert_allclose(clamped, 2.0 * 0.636 * np.arctan(np.asarray(s)), rtol=1e-6)
  np.testing.assert_allclose(clamped[-1], 2.0 * 0.636 * np.pi / 2, rtol=1e-6)


def test_saturated_log_scales_stay_inside_clamp():
  model = flow.CouplingFlow(num_blocks=2, hidden=HIDDEN, clamp=2.0)
  params = model.init(jax.random.key(3), jnp.zeros((1, DIM)))
  # Make every raw log-scale +1e3 (shifts 0): the flow becomes x ↦ c·x per block with the
  # known log-scale clamp · 0.636 · atan(1e3) just below clamp.
  def saturate(path, p):
    if path[-2].key != 'dense_2':
      return p
    if path[-1].key == 'kernel':
      return jnp.zeros_like(p)
    return jnp.concatenate([jnp.full(p.shape[0] // 2, 1e3), jnp.zeros(p.shape[0] // 2)])
  params = jax.tree_util.tree_map_with_path(saturate, params)
  x = jax.random.normal(jax.random.key(4), (4, DIM))
  z, log_det = model.apply(params, x)
  s = 2.0 * 0.636 * np.arctan(1e3)
  assert s < 2.0
  np.testing.assert_allclose(log_det, np.full(4, 2 * DIM * s), rtol=1e-6)
  assert float(jnp.max(log_det)) < 2 * DIM * 2.0
  perm = np.random.RandomState(0).permutation(DIM)[np.random.RandomState(1).permutation(DIM)]
  np.testing.assert_allclose(z, np.exp(2 * s) * np.asarray(x)[:, perm], rtol=1e-5)


def test_bfloat16_input_runs_in_float32(far_from_identity):
  model, params, x = far_from_identity
  x_bf16 = x.astype(jnp.bfloat16)
  z, log_det = model.apply(params, x_bf16)
  assert z.dtype == jnp.float32 and log_det.dtype == jnp.float32
  z_ref, log_det_ref = _np_flow(params, np.asarray(x_bf16, np.float32), NUM_BLOCKS, 2.0)
  np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_det, log_det_ref, rtol=1e-4, atol=1e-4)


def test_init_is_release_scale():
  model = flow.CouplingFlow(num_blocks=2, hidden=64)
  params = model.init(jax.random.key(5), jnp.zeros((1, 32)))
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  kernels = np.concatenate([np.ravel(p) for path, p in flat if path[-1].key == 'kernel'])
  biases = np.concatenate([np.ravel(p) for path, p in flat if path[-1].key == 'bias'])
  assert abs(kernels.mean()) < 0.005 and abs(kernels.std() - 0.05) < 0.005
  assert abs(biases.std() - 0.05) < 0.01  # biases too, not zeros


def test_params_from_torch_layout():
  rng = np.random.RandomState(0)
  state_dict = {}
  for i in (0, 2):
    for subnet in ('subnet1', 'subnet2'):
      for j, (n_out, n_in) in zip((0, 2, 4), ((HIDDEN, 4), (HIDDEN, HIDDEN), (8, HIDDEN))):
        state_dict[f'inn.module_list.{i}.{subnet}.{j}.weight'] = rng.randn(n_out, n_in)
        state_dict[f'inn.module_list.{i}.{subnet}.{j}.bias'] = rng.randn(n_out)
  for i in (1, 3):
    state_dict[f'inn.module_list.{i}.perm'] = np.random.RandomState(i // 2).permutation(8)
  state_dict['means'] = rng.randn(3, 8)
  params = flow.flow_params_from_torch(state_dict, num_blocks=2)
  np.testing.assert_array_equal(
      params['blocks_1']['subnet2']['dense_2']['kernel'],
      state_dict['inn.module_list.2.subnet2.4.weight'].T.astype(np.float32))
  model = flow.CouplingFlow(num_blocks=2, hidden=HIDDEN)
  expected = model.init(jax.random.key(0), jnp.zeros((1, DIM)))['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, expected)

  with pytest.raises(KeyError):
    flow.flow_params_from_torch(state_dict, num_blocks=3)
  with pytest.raises(ValueError, match='beyond'):
    flow.flow_params_from_torch(state_dict, num_blocks=1)
  state_dict['inn.module_list.3.perm'] = np.arange(8)
  with pytest.raises(ValueError, match='permutation'):
    flow.flow_params_from_torch(state_dict, num_blocks=2)
