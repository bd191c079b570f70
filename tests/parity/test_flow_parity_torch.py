"""Numerical parity of the flow with the release's FrEIA construction (PyTorch, CPU)."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
Ff = pytest.importorskip('FrEIA.framework')
Fm = pytest.importorskip('FrEIA.modules')

import torch_reference as ref  # noqa: E402
from ddfp_jax.models import flow  # noqa: E402

DIM = 256
HIDDEN = 256
NUM_BLOCKS = 2
CLAMP = 2.0


def _subnet(c_in, c_out):
  return torch.nn.Sequential(
      torch.nn.Linear(c_in, HIDDEN), torch.nn.ReLU(),
      torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
      torch.nn.Linear(HIDDEN, c_out))


@pytest.fixture(scope='module', params=[1.0, 1.5], ids=['release_init', 'stretched'])
def pair(request):
  release = ref.ReleaseFlow(DIM, HIDDEN, 21, NUM_BLOCKS, CLAMP, scale=request.param).eval()
  params = flow.flow_params_from_torch(ref.numpy_state_dict(release), NUM_BLOCKS)
  model = flow.CouplingFlow(num_blocks=NUM_BLOCKS, hidden=HIDDEN, clamp=CLAMP,
                            precision='highest')
  x = np.random.RandomState(1).randn(512, DIM).astype(np.float32)
  return release, model, {'params': params}, x


def test_forward_and_log_det_match_release(pair):
  release, model, params, x = pair
  with torch.no_grad():
    z_ref, log_det_ref = release(torch.from_numpy(x))
  z, log_det = jax.jit(model.apply)(params, jnp.asarray(x))
  # The comparison only means something if the flow is far from the identity.
  assert np.abs(log_det_ref.numpy()).max() > 1.0
  assert ref.rel_err(z, z_ref.numpy()) <= 1e-5
  assert ref.rel_err(log_det, log_det_ref.numpy()) <= 1e-5


def test_inverse_matches_release(pair):
  release, model, params, x = pair
  z = np.random.RandomState(2).randn(512, DIM).astype(np.float32)
  with torch.no_grad():
    x_ref, _ = release(torch.from_numpy(z), rev=True)
  x_back = jax.jit(lambda p, z: model.apply(p, z, method=model.inverse))(params, z)
  assert ref.rel_err(x_back, x_ref.numpy()) <= 1e-5


def test_ill_conditioned_flow_is_as_accurate_as_torch_float32():
  # With weights 3× the init the flow amplifies float32 rounding (|z| reaches ~10^3), and
  # any two float32 implementations differ by ~10^-4 (the inverse by ~10^-2). Parity then
  # means: about as far from the float64 answer as PyTorch's own float32 run. Which of the
  # two lands closer is luck of rounding (ratios of 0.3-4 over seeds), hence the factor 10;
  # a lossy computation (bfloat16, a dropped term) misses by orders of magnitude more.
  release = ref.ReleaseFlow(DIM, HIDDEN, 21, NUM_BLOCKS, CLAMP, scale=3.0).eval()
  release64 = copy.deepcopy(release).double()
  params = {'params': flow.flow_params_from_torch(ref.numpy_state_dict(release), NUM_BLOCKS)}
  model = flow.CouplingFlow(num_blocks=NUM_BLOCKS, hidden=HIDDEN, clamp=CLAMP,
                            precision='highest')
  x = np.random.RandomState(1).randn(512, DIM).astype(np.float32)
  with torch.no_grad():
    z32, log_det32 = release(torch.from_numpy(x))
    z64, log_det64 = release64(torch.from_numpy(x).double())
    x32, _ = release(torch.from_numpy(x), rev=True)
    x64, _ = release64(torch.from_numpy(x).double(), rev=True)
  z, log_det = jax.jit(model.apply)(params, jnp.asarray(x))
  x_back = jax.jit(lambda p, z: model.apply(p, z, method=model.inverse))(params, x)
  for ours, theirs, exact in ((z, z32, z64), (log_det, log_det32, log_det64),
                              (x_back, x32, x64)):
    torch_err = ref.rel_err(theirs.numpy(), exact.numpy())
    assert torch_err > 1e-5  # really ill-conditioned, or the test says nothing new
    assert ref.rel_err(ours, exact.numpy()) <= 10 * torch_err


def test_sequence_inn_keys_load_the_same_weights(pair):
  release, _, params, _ = pair
  np_state = np.random.get_state()
  try:
    sequence = Ff.SequenceINN(DIM)
    for k in range(NUM_BLOCKS):
      sequence.append(Fm.GLOWCouplingBlock, subnet_constructor=_subnet, clamp=CLAMP)
      sequence.append(Fm.PermuteRandom, seed=k)
  finally:
    np.random.set_state(np_state)
  # Same module order, so the release's weights load into it without the ``inn.`` prefix.
  sequence.load_state_dict(release.inn.state_dict())
  params_seq = flow.flow_params_from_torch(ref.numpy_state_dict(sequence), NUM_BLOCKS)
  assert 'module_list.0.subnet1.0.weight' in sequence.state_dict()
  assert 'inn.module_list.0.subnet1.0.weight' in release.state_dict()
  equal = jax.tree.map(np.array_equal, params_seq, params['params'])
  assert all(jax.tree.leaves(equal))
