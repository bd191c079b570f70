"""Stopping at a consistent step when the job is told to terminate (SIGTERM).

Schedulers announce the end of a job with SIGTERM and kill it some time later: SLURM at
a preemption or the time limit (after KillWait / GraceTime seconds, or earlier with
`--signal=TERM@SECONDS`), Cloud TPU before a maintenance event, `kill` by hand. The
trainer asks `Watch.reached(step)` after every step; when it answers True, every process
saves that step, waits for the save and stops (`Preempted`), so that rerunning the same
command resumes exactly there.

- Multi-process runs (`jax.distributed` initialized): JAX's preemption service.
  `jax.distributed.initialize` installs its own SIGTERM handler; a notice received by any
  process reaches all of them, and they agree on a step (one after the furthest step any
  process has reported), at which `reached_preemption_sync_point` is True on every
  process. It must be called at every step, with consecutive steps, from the first one.
- A single process: a Python SIGTERM handler, installed only while the `Watch` is open
  (and only from the main thread), sets a flag read at the next step boundary; the
  previous handler is put back on exit.
"""
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

# Exit status of a run stopped by SIGTERM: 128 + 15, what a shell (and so SLURM's
# accounting of a batch script, Docker, Kubernetes) reports for a process ended by SIGTERM:
# schedulers and wrappers count it as a termination, neither a success nor a crash.
# Dying from the signal itself (default action, then os.kill) would read the same to a
# shell but skip Python's exit handlers, JAX's distributed shutdown among them.
EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Training stopped after SIGTERM, with step `step` saved in `directory`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM; step {step} saved in {directory}")
    self.step = step
    self.directory = directory


class Watch:
  """Context manager: `reached(step)` is True at the step where training must stop.

  `start` is the step training starts from. In a multi-process run it is reported to
  JAX's service when the `Watch` is made, so create it as soon as `start` is known: a
  notice that comes before would set the stop at step 1 (the service counts from 0),
  which a resumed run never reaches. A single process handles SIGTERM only inside the
  `with` block; before it, SIGTERM ends the process as usual (nothing new to save).
  """

  def __init__(self, start: int):
    self._distributed = jax.distributed.is_initialized()
    self._signalled = False
    self._installed = False
    self._previous = None
    if self._distributed:
      multihost_utils.reached_preemption_sync_point(start)

  def _handler(self, signum, frame):
    del signum, frame
    self._signalled = True

  def __enter__(self) -> "Watch":
    if not self._distributed and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:
      # None: the previous handler was not set from Python and cannot be put back.
      signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None
                    else self._previous)
      self._installed = False

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop; call once per step on every process."""
    if self._distributed:
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._signalled
    if stop:
      logging.warning("SIGTERM received: saving step %d and stopping.", step)
    return stop
