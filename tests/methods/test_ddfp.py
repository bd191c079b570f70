"""DDFP's own schedule and state on top of the method contract: the flow trains only in
its phases, the perturbation only in its, and the paper's site perturbs v directly."""
import jax
import numpy as np
import pytest

from ddfp_jax.methods import interface
from ddfp_jax.methods.ddfp import Phase
from ddfp_jax.training.step import phase_at, pmap_train_step, run_phases
from method_contract import ContractRun
from tiny import leaves, max_abs_diff, tiny_config

WARMUP = Phase(semi=False, train_flow=False, perturb=False)
FLOW = Phase(semi=True, train_flow=True, perturb=False)
DDFP = Phase(semi=True, train_flow=True, perturb=True)


def test_phase_schedule():
  config = tiny_config()   # 2 steps per epoch: warm-up epoch 0, flow epoch 1, DDFP after
  assert [phase_at(config, s) for s in (0, 1, 2, 3, 4, 11)] == [
      WARMUP, WARMUP, FLOW, FLOW, DDFP, DDFP]
  assert run_phases(config) == (WARMUP, FLOW, DDFP)
  supervised = tiny_config(method="supervised")
  assert run_phases(supervised) == (interface.Phase(semi=False),)
  consistency = tiny_config(method="fixmatch")
  assert run_phases(consistency) == (interface.Phase(False), interface.Phase(True))
  # eval_flow changes no phase: DDFP trains its flow in every semi-supervised phase anyway.
  assert run_phases(tiny_config(**{"ddfp.eval_flow": True})) == (WARMUP, FLOW, DDFP)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """DDFP's steps through its three phases on 2 devices (the contract's run, light)."""
  return ContractRun("ddfp", tmp_path_factory.mktemp("ddfp"), light=True)


def test_the_flow_trains_in_its_phases_only_and_the_branch_in_its(run):
  assert run.phases == (WARMUP, FLOW, DDFP)
  for phase, before, after, metrics in run.steps:
    flow_before, flow_after = before.extra["flow_params"], after.extra["flow_params"]
    if phase.train_flow:
      assert max_abs_diff(flow_after, flow_before) > 0
      assert np.isfinite(float(metrics["loss_flow"]))
    else:
      for a, b in zip(leaves(flow_after), leaves(flow_before)):
        np.testing.assert_array_equal(a, b)
      assert "loss_flow" not in metrics
    assert ("loss_feature" in metrics) == phase.perturb
    if phase.perturb:
      assert float(metrics["loss_feature"]) > 0


def test_paper_site_perturbs_the_features_directly(run):
  """semi.site="feature": delta is added to v (no auxiliary-BN pass of the classifier
  block), the step trains, and its feature loss differs from the release site's."""
  assert run.config.semi.site == "classifier_input"   # the demo's, as the contract runs it
  phase, state, _, release_metrics = next(s for s in run.steps if s[0] == DDFP)
  config = run.config.copy_and_resolve_references()
  config.semi.site = "feature"
  p_step = pmap_train_step(config, devices=jax.local_devices()[:2], max_traces=1)
  new, metrics = p_step(state, run.batch2, phase)
  assert int(metrics["nonfinite"]) == 0
  assert max_abs_diff(new.params, state.params) > 0
  # The auxiliary BN is never used on this site, so its statistics do not move.
  aux = lambda s: {k: v["aux"] for k, v in s.batch_stats.items() if k.startswith("classifier_bn")}
  assert aux(state)
  for a, b in zip(leaves(aux(new)), leaves(aux(state))):
    np.testing.assert_array_equal(a, b)
  assert float(metrics["loss_feature"]) != pytest.approx(
      float(release_metrics["loss_feature"]), rel=1e-3)
