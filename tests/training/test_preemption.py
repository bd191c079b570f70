"""SIGTERM at a step boundary (ddfp_jax/training/preemption.py), in this process.

End to end (main.py on one and two processes: exit status 143, the paragraph, the
checkpoint of the agreed step, the resume) in test_multiprocess.py.
"""
import os
import signal

import jax
from jax.experimental import multihost_utils

from ddfp_jax.training import preemption


def test_one_process_stops_at_the_step_after_sigterm_and_restores_the_handler():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Watch(0) as watch:
    handler = signal.getsignal(signal.SIGTERM)
    assert handler is not previous and callable(handler)   # else SIGTERM ends pytest
    assert not watch.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.reached(2)
    assert watch.reached(3)   # the flag stays set
  assert signal.getsignal(signal.SIGTERM) is previous


def test_several_processes_ask_jax_at_every_step_and_leave_sigterm_to_it(monkeypatch):
  asked = []

  def reached(step):   # JAX's service, agreeing on step 5
    asked.append(step)
    return step == 5
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", reached)
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Watch(3) as watch:
    assert signal.getsignal(signal.SIGTERM) is previous   # JAX's handler stays
    stops = [watch.reached(step) for step in (4, 5)]
  assert stops == [False, True]
  assert asked == [3, 4, 5]   # the start reported at once, then every step
  assert signal.getsignal(signal.SIGTERM) is previous
  assert preemption.EXIT_CODE == 143
