"""The contract every method of `ddfp_jax.methods.METHODS` keeps, tested for each.

A method added to the dict is tested here by being there: every phase of its run
compiles once and a further trace raises; losses are finite and the student moves; a
non-finite step leaves the state bit-identical; the same global batch on 1 and 2 devices
gives the same losses and parameters; the EMA teacher moves by exactly (1 - m)(student -
teacher); a state saved and restored continues bit for bit.

Each method's steps are compiled once (`contract_run`, tests/methods/conftest.py) and
the tests read what that run recorded.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.training.step import RetraceError, replicate
from method_contract import contract_batch, labeled_image_keys
from tiny import leaves, max_abs_diff

def test_every_phase_trains_finite_and_compiles_once(contract_run):
  run, name = contract_run, contract_run.name
  assert run.phases[0].semi is False   # every method starts with the supervised warm-up
  for phase, before, after, metrics in run.steps:
    assert int(metrics["nonfinite"]) == 0, phase
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0, phase
    assert all(np.all(np.isfinite(x)) for x in leaves(after) if x.dtype.kind == "f")
    assert max_abs_diff(after.params, before.params) > 0, "the student must change"
    assert int(after.step) == int(before.step) + 1
    if phase.semi:
      assert "loss_image" in metrics or name == "supervised"
  # One trace per phase so far: one more (e.g. a batch of another size) must raise.
  bigger = contract_batch(run.config, 3, 2, 2)
  with pytest.raises(RetraceError, match=f"but the run has {len(run.phases)} phase"):
    run.p2(run.final_2, bigger, run.phases[-1])


def test_nonfinite_step_keeps_the_state_bit_identical(contract_run):
  run, name = contract_run, contract_run.name
  state = run.final_2
  bad = dict(run.batch2, **{k: np.full_like(run.batch2[k], np.nan)
                            for k in labeled_image_keys(run.config)})
  new, metrics = run.p2(state, bad, run.phases[-1])
  assert int(metrics["nonfinite"]) == 1
  for a, b in zip(leaves(new), leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_one_and_two_devices_give_the_same_losses_and_parameters(contract_run):
  run, name = contract_run, contract_run.name
  for step, (before, m2, m1, final_2, final_1) in enumerate(run.split):
    assert set(m1) == set(m2)
    for key in m2:
      # Losses to 1e-5; norms and shares, sums of more reordered terms, to 1e-4.
      rel = 1e-5 if key.startswith("loss") else 1e-4
      assert float(m1[key]) == pytest.approx(float(m2[key]), rel=rel, abs=1e-6), (step, key)
    # After the update the parameters agree to float32 rounding of reordered sums. DGCL's
    # contrastive step ranks its batch positives by density (tests/method_contract.py):
    # a rank flip moves the update by about 3e-4 of its size, so there the bound is 1e-3
    # of the update; a split that scaled or dropped a device's share of the gradient
    # would differ by a large part of it.
    bound = 1e-5
    if name == "dgcl" and m2["memory_fill"] == 1.0 and float(m2["loss_contrast"]) > 0:
      bound = max(bound, 1e-3 * max_abs_diff(final_2.params, before.params))
    for part in ("params", "batch_stats", "teacher_params", "teacher_batch_stats"):
      diff = max_abs_diff(getattr(final_1, part), getattr(final_2, part))
      assert diff < bound, (step, part, diff, bound)
    for a, b in zip(leaves(final_1.extra), leaves(final_2.extra)):
      # DGCL's memory stores network features (up to ~2) computed with the updated
      # parameters: the same absolute 1e-5 per unit of their scale.
      scale = max(1.0, float(np.max(np.abs(b)))) if name == "dgcl" and b.size else 1.0
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_ema_teacher_moves_by_exactly_one_minus_m_of_the_gap(contract_run):
  run, name = contract_run, contract_run.name
  semi = [p for p in run.phases if p.semi]
  if not semi:
    pytest.skip(f"{name} has no semi-supervised phase: its teacher is never used")
  step = 40   # t - t0 + 1 = 39: the decay has reached m = 0.9
  state = run.final_2
  # A teacher that differs from the student (mildly: one far off would produce features
  # the flow cannot score, and the step would rightly refuse to update).
  teacher = jax.tree.map(lambda x: 0.98 * x, state.teacher_params)
  state = replicate(state.replace(step=jnp.asarray(step, jnp.int32), teacher_params=teacher),
                    jax.local_devices()[:2])
  new, metrics = run.p2(state, run.batch2, semi[-1])
  assert int(metrics["nonfinite"]) == 0
  assert float(metrics["ema_decay"]) == pytest.approx(0.9)
  for t_old, t_new, s_new in zip(leaves(state.teacher_params), leaves(new.teacher_params),
                                 leaves(new.params)):
    np.testing.assert_allclose(t_new - t_old, 0.1 * (s_new - t_old), rtol=1e-5, atol=1e-7)


def test_first_semi_supervised_step_sets_the_teacher_to_the_student(contract_run):
  run, name = contract_run, contract_run.name
  semi = [p for p in run.phases if p.semi]
  if not semi:
    pytest.skip(f"{name} has no semi-supervised phase")
  t0 = run.config.schedule.sup_only_epochs * run.config.steps_per_epoch
  state = replicate(run.final_2.replace(step=jnp.asarray(t0, jnp.int32)),
                    jax.local_devices()[:2])
  new, _ = run.p2(state, run.batch2, semi[0])
  for t, s in zip(leaves(new.teacher_params), leaves(new.params)):
    np.testing.assert_array_equal(t, s)


def test_saved_and_restored_state_continues_bit_for_bit(contract_run):
  run, name = contract_run, contract_run.name
  (state_a, metrics_a), (state_b, metrics_b) = run.resumed
  for a, b in zip(leaves((state_a, metrics_a)), leaves((state_b, metrics_b))):
    np.testing.assert_array_equal(a, b)
