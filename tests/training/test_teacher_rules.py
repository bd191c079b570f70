"""The teacher's EMA decay per step under each teacher rule, against the closed forms."""
import numpy as np
import pytest

from ddfp_jax.training.step import TEACHERS, ema_decay
from tiny import tiny_config

L, E0, M = 4, 1, 0.9   # steps per epoch, warm-up epochs, EMA cap


def _decays(teacher):
  config = tiny_config(**{"semi.teacher": teacher, "steps_per_epoch": L,
                          "schedule.sup_only_epochs": E0, "semi.ema_decay": M})
  return [float(ema_decay(config, np.int32(i))) for i in range(E0 * L, E0 * L + 40)]


def test_every_rule_is_known():
  assert TEACHERS == ("ema", "shared", "shared_first_epoch")


@pytest.mark.parametrize("teacher, closed_form", [
    # paper: d = min(1 - 1/(i - L E0 + 1), m) from the first semi-supervised step on
    ("ema", lambda i: min(1 - 1 / (i - L * E0 + 1), M)),
    # DDFP's release: the teacher is the student
    ("shared", lambda i: 0.0),
    # DGCL's release: the student during epoch E0 (t.data = s.data), then the same EMA
    ("shared_first_epoch",
     lambda i: 0.0 if i < (E0 + 1) * L else min(1 - 1 / (i - L * E0 + 1), M)),
])
def test_decay_follows_the_closed_form(teacher, closed_form):
  expected = [closed_form(i) for i in range(E0 * L, E0 * L + 40)]
  np.testing.assert_allclose(_decays(teacher), expected, rtol=1e-6, atol=1e-7)


def test_dgcl_rule_starts_its_ema_at_one_minus_one_over_l_plus_one():
  decays = _decays("shared_first_epoch")
  assert decays[:L] == [0.0] * L and decays[L] == pytest.approx(1 - 1 / (L + 1))
