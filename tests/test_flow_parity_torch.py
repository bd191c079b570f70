"""Numerical parity of the flow with the release's FrEIA construction (PyTorch, CPU)."""
import copy
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
Ff = pytest.importorskip('FrEIA.framework')
Fm = pytest.importorskip('FrEIA.modules')

from ddfp_jax import flow  # noqa: E402

DIM = 256
HIDDEN = 256
NUM_BLOCKS = 2
CLAMP = 2.0


def _subnet(c_in, c_out):
  return torch.nn.Sequential(
      torch.nn.Linear(c_in, HIDDEN), torch.nn.ReLU(),
      torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
      torch.nn.Linear(HIDDEN, c_out))


class _ReleaseFlow(torch.nn.Module):
  """The release's flow module: a ``ReversibleGraphNet`` named ``inn`` beside ``means``."""

  def __init__(self, num_classes, scale):
    super().__init__()
    nodes = [Ff.InputNode(DIM, name='input')]
    for k in range(NUM_BLOCKS):
      nodes.append(Ff.Node(nodes[-1], Fm.GLOWCouplingBlock,
                           {'subnet_constructor': _subnet, 'clamp': CLAMP},
                           name=f'coupling_{k}'))
      nodes.append(Ff.Node(nodes[-1], Fm.PermuteRandom, {'seed': k}, name=f'permute_{k}'))
    nodes.append(Ff.OutputNode(nodes[-1], name='output'))
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      self.inn = Ff.ReversibleGraphNet(nodes, verbose=False)
    # The release's init: every trainable flow param (the permutations are frozen) is
    # redrawn as 0.05 · N(0, 1). ``scale`` > 1 mimics a flow that has moved in training.
    for p in self.inn.parameters():
      if p.requires_grad:
        p.data = scale * 0.05 * torch.randn_like(p)
    self.means = torch.nn.Parameter(torch.randn(num_classes, DIM))

  def forward(self, x, rev=False):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      return self.inn(x, rev=rev)


def _rel_err(a, b):
  # Norm-wise relative error: max |a − b| / max |b|. Element-wise ratios would blow up on
  # entries that happen to be near zero and say nothing about the float32 agreement.
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _numpy_state_dict(module):
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


@pytest.fixture(scope='module', params=[1.0, 1.5], ids=['release_init', 'stretched'])
def pair(request):
  # PermuteRandom reseeds NumPy's global generator; leave it as the other tests found it.
  np_state = np.random.get_state()
  try:
    torch.manual_seed(0)
    release = _ReleaseFlow(num_classes=21, scale=request.param).eval()
  finally:
    np.random.set_state(np_state)
  params = flow.flow_params_from_torch(_numpy_state_dict(release), NUM_BLOCKS)
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
  assert _rel_err(z, z_ref.numpy()) <= 1e-5
  assert _rel_err(log_det, log_det_ref.numpy()) <= 1e-5


def test_inverse_matches_release(pair):
  release, model, params, x = pair
  z = np.random.RandomState(2).randn(512, DIM).astype(np.float32)
  with torch.no_grad():
    x_ref, _ = release(torch.from_numpy(z), rev=True)
  x_back = jax.jit(lambda p, z: model.apply(p, z, method=model.inverse))(params, z)
  assert _rel_err(x_back, x_ref.numpy()) <= 1e-5


def test_ill_conditioned_flow_is_as_accurate_as_torch_float32():
  # With weights 3× the init the flow amplifies float32 rounding (|z| reaches ~10^3), and
  # any two float32 implementations differ by ~10^-4 (the inverse by ~10^-2). Parity then
  # means: about as far from the float64 answer as PyTorch's own float32 run. Which of the
  # two lands closer is luck of rounding (ratios of 0.3-4 over seeds), hence the factor 10;
  # a lossy computation (bfloat16, a dropped term) misses by orders of magnitude more.
  np_state = np.random.get_state()
  try:
    torch.manual_seed(0)
    release = _ReleaseFlow(num_classes=21, scale=3.0).eval()
  finally:
    np.random.set_state(np_state)
  release64 = copy.deepcopy(release).double()
  params = {'params': flow.flow_params_from_torch(_numpy_state_dict(release), NUM_BLOCKS)}
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
    torch_err = _rel_err(theirs.numpy(), exact.numpy())
    assert torch_err > 1e-5  # really ill-conditioned, or the test says nothing new
    assert _rel_err(ours, exact.numpy()) <= 10 * torch_err


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
  params_seq = flow.flow_params_from_torch(_numpy_state_dict(sequence), NUM_BLOCKS)
  assert 'module_list.0.subnet1.0.weight' in sequence.state_dict()
  assert 'inn.module_list.0.subnet1.0.weight' in release.state_dict()
  equal = jax.tree.map(np.array_equal, params_seq, params['params'])
  assert all(jax.tree.leaves(equal))
