"""The pmapped DDFP step: phases, EMA, device-count invariance, non-finite handling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.state import create_train_state
from ddfp_jax.train_step import (Phase, RetraceError, ema_decay, phase_at, pmap_train_step,
                                 replicate, run_phases)
from tiny import synthetic_batch, tiny_config

WARMUP = Phase(semi=False, train_flow=False, perturb=False)
FLOW = Phase(semi=True, train_flow=True, perturb=False)
DDFP = Phase(semi=True, train_flow=True, perturb=True)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.fixture(scope="module")
def run():
  config = tiny_config(**{"ddfp.ema_decay": 0.9, "total_steps": 100})
  state = replicate(create_train_state(config, jax.random.key(0)))
  p_step = pmap_train_step(config)
  batch = synthetic_batch(config, jax.local_device_count())
  return config, state, p_step, batch


def test_phase_schedule():
  config = tiny_config()   # 2 steps per epoch: warm-up epoch 0, flow epoch 1, DDFP after
  assert [phase_at(config, s) for s in (0, 1, 2, 3, 4, 11)] == [
      WARMUP, WARMUP, FLOW, FLOW, DDFP, DDFP]
  assert run_phases(config) == (WARMUP, FLOW, DDFP)
  supervised = tiny_config(**{"ddfp.semi_supervised": False})
  assert run_phases(supervised) == (WARMUP,)
  consistency = tiny_config(**{"ddfp.perturbation": "none"})
  assert run_phases(consistency) == (WARMUP, Phase(True, False, False))


def test_every_phase_trains_without_nan_and_compiles_once(run):
  config, state, p_step, batch = run
  for phase in (WARMUP, FLOW, DDFP):
    for _ in range(2):   # a second step in the same phase must not trace again
      new, metrics = p_step(state, batch, phase)
      assert int(metrics["nonfinite"]) == 0
      assert all(np.all(np.isfinite(x)) for x in _leaves(new) if x.dtype.kind == "f")
      assert _max_abs_diff(new.params, state.params) > 0, "the student must change"
      assert int(new.step) == int(state.step) + 1
      if phase.train_flow:
        assert _max_abs_diff(new.flow_params, state.flow_params) > 0
        assert np.isfinite(float(metrics["loss_flow"]))
      else:
        np.testing.assert_array_equal(_leaves(new.flow_params)[0],
                                      _leaves(state.flow_params)[0])
      if phase.perturb:
        assert float(metrics["loss_feature"]) > 0
      state = new
  # Three phases, three traces: one more (e.g. a changed batch shape) must raise.
  bigger = synthetic_batch(tiny_config(**{"data.labeled_per_device": 3}),
                           jax.local_device_count())
  with pytest.raises(RetraceError, match="traced 4 times but the run has 3 phase"):
    p_step(state, bigger, DDFP)


def test_teacher_moves_by_exactly_one_minus_m_of_the_gap(run):
  config, state, p_step, batch = run
  step = 40   # t - t0 + 1 = 39: the decay has reached m = 0.9
  assert float(ema_decay(config, jnp.asarray(step))) == pytest.approx(0.9)
  # A teacher that differs from the student (mildly: a teacher far off produces features
  # the flow cannot score, and the step would rightly refuse to update).
  teacher = jax.tree.map(lambda x: 0.98 * x, state.teacher_params)
  state = replicate(state.replace(step=jnp.asarray(step, jnp.int32), teacher_params=teacher))
  new, metrics = p_step(state, batch, DDFP)
  assert int(metrics["nonfinite"]) == 0
  assert float(metrics["ema_decay"]) == pytest.approx(0.9)
  assert _max_abs_diff(new.params, state.params) > 0
  for t_old, t_new, s_new in zip(_leaves(state.teacher_params), _leaves(new.teacher_params),
                                 _leaves(new.params)):
    np.testing.assert_allclose(t_new - t_old, 0.1 * (s_new - t_old), rtol=1e-5, atol=1e-7)


def test_first_semi_supervised_step_sets_the_teacher_to_the_student(run):
  config, state, p_step, batch = run
  t0 = config.schedule.sup_only_epochs * config.steps_per_epoch
  state = replicate(state.replace(step=jnp.asarray(t0, jnp.int32)))
  new, _ = p_step(state, batch, FLOW)
  for t, s in zip(_leaves(new.teacher_params), _leaves(new.params)):
    np.testing.assert_array_equal(t, s)


def test_nonfinite_step_keeps_the_state(run):
  config, state, p_step, batch = run
  bad = dict(batch, labeled_image=np.full_like(batch["labeled_image"], np.nan))
  new, metrics = p_step(state, bad, DDFP)
  assert int(metrics["nonfinite"]) == 1
  for a, b in zip(_leaves(new), _leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_one_and_two_devices_give_the_same_losses_and_updates():
  """The same global batch split over 1 or 2 devices. Randomness that depends on the
  split (dropout masks, CutMix boxes, flow noise and subsampling) is switched off; all
  else, cross-replica BN and the density-descending direction included, must agree."""
  config = tiny_config(**{
      "model.dropout_rate": 0.0, "ddfp.cutmix_prob": 0.0, "flow.noise_std": 0.0,
      "flow.num_samples": 4096, "optim.lr_scaling": "none", "data.labeled_per_device": 4,
      "data.unlabeled_per_device": 4})
  state = create_train_state(config, jax.random.key(0))
  batch = synthetic_batch(config, 1, seed=3)
  split = {k: v.reshape(2, v.shape[1] // 2, *v.shape[2:]) for k, v in batch.items()}
  results = {}
  for n, b in ((1, batch), (2, split)):
    devices = jax.local_devices()[:n]
    p_step = pmap_train_step(config, devices=devices, max_traces=2)
    s, m1 = p_step(replicate(state, devices), b, FLOW)
    s, m2 = p_step(s, b, DDFP)
    results[n] = (s, m1, m2)
  (s1, a1, b1), (s2, a2, b2) = results[1], results[2]
  for k in ("loss", "loss_sup", "loss_image", "loss_flow"):
    assert float(a1[k]) == pytest.approx(float(a2[k]), rel=1e-5), k
  for k in ("loss", "loss_sup", "loss_image", "loss_feature", "loss_flow", "grad_norm"):
    assert float(b1[k]) == pytest.approx(float(b2[k]), rel=1e-5), k
  # After two updates the parameters agree to float32 rounding of reordered sums.
  for name in ("params", "batch_stats", "teacher_params", "flow_params"):
    diff = _max_abs_diff(getattr(s1, name), getattr(s2, name))
    assert diff < 1e-5, (name, diff)


def test_paper_site_perturbs_the_features_directly():
  """ddfp.site="feature": delta is added to v (no auxiliary-BN pass of the classifier
  block), the step trains, and its feature loss differs from the release site's."""
  losses = {}
  for site in ("feature", "classifier_input"):
    config = tiny_config(**{"ddfp.site": site, "model.dropout_rate": 0.0})
    state = replicate(create_train_state(config, jax.random.key(0)))
    p_step = pmap_train_step(config, max_traces=1)
    batch = synthetic_batch(config, jax.local_device_count())
    new, metrics = p_step(state, batch, DDFP)
    assert int(metrics["nonfinite"]) == 0
    assert _max_abs_diff(new.params, state.params) > 0
    losses[site] = float(metrics["loss_feature"])
    if site == "feature":
      # The auxiliary BN is never used on this site, so its statistics do not move.
      aux = [np.asarray(x) for x in jax.tree.leaves(
          {k: v["aux"] for k, v in new.batch_stats.items() if k.startswith("classifier_bn")})]
      old = [np.asarray(x) for x in jax.tree.leaves(
          {k: v["aux"] for k, v in state.batch_stats.items() if k.startswith("classifier_bn")})]
      for a, b in zip(aux, old):
        np.testing.assert_array_equal(a, b)
  assert losses["feature"] != pytest.approx(losses["classifier_input"], rel=1e-3)
