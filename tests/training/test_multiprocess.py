"""Multi-process runs on one machine: 2 processes x 1 CPU device against 1 process x 2.

Every run is `main.py` in its own subprocess (started by launch/local_cpu.py's helpers,
which give each one its own XLA_FLAGS device count; conftest's 4 devices apply to the
pytest process only), on the tiny model and a small demo set, with the global batch the
same in all runs: 2 devices x (2 labeled + 2 unlabeled).

To keep compile time down every run starts from one checkpoint at step 2 (the initial
state saved as step 2, written here), where the schedule (1 step per epoch) is already in
the DDFP phase (pseudo labels, flow training, density-descending perturbation): each
process compiles that one phase only, and the multi-process runs restore a checkpoint
written by a single process.

  * `R`: 1 process, 2 devices, steps 3..16 (the reference);
  * `A`: 2 processes, 1 device each; once its checkpoint of step 4 exists, process 1 is
    killed (SIGKILL): process 0 must exit non-zero with main.py's paragraph within
    FAILURE_BOUND_S seconds;
  * `B`: 2 processes again, same command: resumes A from its last complete checkpoint;
    once it has logged a step, process 1 alone gets SIGTERM: both processes must save
    the same step (JAX's preemption service) and exit with 143, process 0 with main.py's
    paragraph.

Then A+B's losses (every train/ scalar of every step) and the state B saved when it
stopped (student, teacher, flow, both optimiser states, RNG) must equal R's within
RTOL / ATOL.

`S`: 1 process, 2 devices, checkpoints rare, gets SIGTERM once it has logged a step: it
must exit with 143 and its paragraph, a checkpoint of the step it names must exist, and
the same command must resume from that step and run to its end.

All subprocesses use the session's XLA compilation cache: a run with the same programs as
an earlier one (same layout and phase: R and S, A and B) does not compile them again.
"""
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.training.checkpoint import Checkpointer
from ddfp_jax.data import pipeline
from ddfp_jax.training.state import create_train_state
from tiny import as_flags, tiny_config
import paths

REPO = str(paths.REPO)
_spec = importlib.util.spec_from_file_location(
    "local_cpu", os.path.join(REPO, "launch", "local_cpu.py"))
local_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_cpu)

START = 2            # the shared starting checkpoint
LAST = 16            # the reference runs to here; B is stopped by SIGTERM before
HEARTBEAT_S = 10     # --heartbeat_timeout of the multi-process runs
FAILURE_BOUND_S = 30  # a survivor must be gone this long after its peer was killed
RTOL = 1e-5          # losses, relative
ATOL = 1e-5          # every leaf of the final state, absolute
RUN_TIMEOUT_S = 400

# The tiny model of tests/tiny.py on a small demo set; one step per epoch, so step 2 on
# is the DDFP phase; no evaluation (eval_every is never reached, total_steps neither).
_FLAT = {
    "total_steps": 100, "steps_per_epoch": 1, "data.num_classes": 11,
    "data.demo_image_size": 48, "data.demo_labeled": 8, "data.demo_unlabeled": 16,
    "data.demo_validation": 6, "data.eval_per_device": 2, "data.crop_size": 32,
    "data.labeled_per_device": 2, "data.unlabeled_per_device": 2, "model.width": 1 / 16,
    "model.aspp_rates": (1, 2, 3), "ddfp.flow.hidden": 16, "ddfp.flow.num_samples": 64,
    "semi.threshold": 0.2, "train.log_every": 1, "train.checkpoint_every": 1,
    "train.eval_every": 1000, "train.keep_checkpoints": LAST,
}


def _config(data_dir):
  return tiny_config(**{**_FLAT, "data.data_dir": str(data_dir)})


def _args(data_dir, workdir, steps, **extra):
  """main.py's arguments; `extra` overrides config keys, with "__" for ".": train__x."""
  flat = {**_FLAT, "data.data_dir": str(data_dir), "train.steps_this_run": steps,
          **{k.replace("__", "."): v for k, v in extra.items()}}
  return ["--config", "configs/demo.py", "--workdir", str(workdir), *as_flags(flat)]


def _env():
  # The same PRNG implementation as the state written here (conftest uses "rbg"); the
  # environment already names the compilation cache the test processes share (conftest).
  return dict(os.environ, JAX_DEFAULT_PRNG_IMPL=jax.config.jax_default_prng_impl)


def _multi(args, log_dir):
  return local_cpu.start_processes(
      [*args, f"--heartbeat_timeout={HEARTBEAT_S}", "--distributed_timeout=120"],
      num_processes=2, devices_per_process=1, log_dir=str(log_dir), env=_env())


def _single(args, log):
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                            env=local_cpu.process_env(2, _env()), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _read(path):
  with open(path) as f:
    return f.read()


def _check_exit(proc, log, timeout=RUN_TIMEOUT_S):
  code = proc.wait(timeout=timeout)
  assert code == 0, f"{log} exited with {code}:\n{_read(log)[-4000:]}"


def _latest(workdir):
  steps = [int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/latest/*")
           if os.path.basename(p).isdigit()]
  return max(steps, default=None)


def _train_scalars(workdir):
  """{step: {name: value}} of the train/ scalars in the run's TensorBoard files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(f"{workdir}/events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith("train/"):
          out.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
  return out


def _restore(config, workdir, step):
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    return ckpt.restore(create_train_state(config, jax.random.key(0)), step)


def _wait_for(log, text, procs, timeout=RUN_TIMEOUT_S):
  """Waits until `text` is in `log` while every process of `procs` runs."""
  t0 = time.monotonic()
  while text not in _read(log):
    assert all(p.poll() is None for p in procs), _read(log)[-3000:]
    assert time.monotonic() - t0 < timeout, f"no {text!r} in {log} after {timeout} s"
    time.sleep(0.1)


def _stopped_paragraph(log):
  lines = [l for l in _read(log).splitlines() if l.startswith("stopped: SIGTERM received")]
  assert len(lines) == 1, _read(log)[-3000:]
  return lines[0]


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(f"{workdir}/checkpoints/latest") if n.isdigit())


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
  """The demo set prepared, and a workdir holding only the initial state, saved as step
  START."""
  root = tmp_path_factory.mktemp("mp")
  config = _config(root / "tfds")
  pipeline.prepare(config)   # here, so that concurrent runs only read it
  state = create_train_state(config, jax.random.key(config.seed))
  state = state.replace(step=jnp.asarray(START, jnp.int32))
  with Checkpointer(os.path.join(root / "start", "checkpoints")) as ckpt:
    ckpt.save(START, state)
  return root


def test_killed_peer_stops_the_survivor_and_the_resumed_run_matches_one_process(
    start_checkpoint):
  root = start_checkpoint
  data_dir = root / "tfds"
  for name in ("reference", "multi"):
    shutil.copytree(root / "start", root / name)
  reference, multi = root / "reference", root / "multi"
  logs = root / "logs"
  logs.mkdir()

  t0 = time.monotonic()
  ref = _single(_args(data_dir, reference, LAST - START), logs / "reference.log")
  run_a = _multi(_args(data_dir, multi, 0), logs / "a")
  a_logs = [logs / "a" / f"process_{i}.log" for i in range(2)]

  # Kill process 1 once the run has checkpointed step START + 2.
  while (_latest(multi) or 0) < START + 2:
    assert all(p.poll() is None for p in run_a), "\n".join(_read(l)[-3000:] for l in a_logs)
    assert time.monotonic() - t0 < RUN_TIMEOUT_S, "run A made no progress"
    time.sleep(0.2)
  run_a[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  try:
    code = run_a[0].wait(timeout=FAILURE_BOUND_S)
  except subprocess.TimeoutExpired:
    run_a[0].kill()
    pytest.fail(f"process 0 still running {FAILURE_BOUND_S} s after its peer was killed")
  stopped_after = time.monotonic() - killed
  survivor = _read(a_logs[0])
  message = [line for line in survivor.splitlines() if line.startswith("error:")]
  print(f"\nsurvivor exited with {code} after {stopped_after:.1f} s: {message}")
  assert code != 0
  assert message and "process 0 of 2 stopped: another process of the run is gone" in message[0]
  assert "is intact in" in message[0] and "start every process again" in message[0]
  run_a[1].wait()

  # The last complete checkpoint is usable: the same command resumes from it. Once B
  # has logged a step, SIGTERM to process 1 only: both save the same step and stop.
  resumed_from = _latest(multi)
  assert START + 2 <= resumed_from <= LAST - 2
  run_b = _multi(_args(data_dir, multi, 0), logs / "b")
  b_logs = [logs / "b" / f"process_{i}.log" for i in range(2)]
  _wait_for(b_logs[0], f"] [{resumed_from + 1}] train/", run_b)
  run_b[1].send_signal(signal.SIGTERM)
  codes = []
  for proc in run_b:
    try:
      codes.append(proc.wait(timeout=60))
    except subprocess.TimeoutExpired:
      for p in run_b:
        p.kill()
      pytest.fail("B did not stop within 60 s of SIGTERM:\n" +
                  "\n".join(_read(l)[-3000:] for l in b_logs))
  assert codes == [143, 143], "\n".join(_read(l)[-3000:] for l in b_logs)
  assert f"Resumed from step {resumed_from}" in _read(b_logs[0])
  paragraph = _stopped_paragraph(b_logs[0])
  print(paragraph)
  stop = int(re.search(r"every process saved step (\d+)", paragraph).group(1))
  assert "running the same command again on every process resumes from it" in paragraph
  for log in b_logs:   # each process logs the step it saved; only process 0 the paragraph
    assert f"SIGTERM received: saving step {stop} and stopping." in _read(log)
  assert "stopped: SIGTERM" not in _read(b_logs[1])
  assert resumed_from < stop < LAST and _latest(multi) == stop
  _check_exit(ref, logs / "reference.log")
  print(f"runs took {time.monotonic() - t0:.0f} s; resumed from step {resumed_from}, "
        f"stopped by SIGTERM at step {stop}")

  # Same losses at every step (A's steps, then B's), same state at B's stop.
  got, want = _train_scalars(multi), _train_scalars(reference)
  assert sorted(got) == list(range(START + 1, stop + 1))
  worst = 0.0
  for step in got:
    assert set(got[step]) == set(want[step])
    for tag, value in got[step].items():
      np.testing.assert_allclose(value, want[step][tag], rtol=RTOL, atol=1e-7,
                                 err_msg=f"{tag} at step {step}")
      worst = max(worst, abs(value - want[step][tag]) / max(abs(want[step][tag]), 1e-12))
  config = _config(data_dir)
  a, b = _restore(config, multi, stop), _restore(config, reference, stop)
  assert int(a.step) == stop
  diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x))
  print(f"largest relative loss difference {worst:.2e}, largest state difference {diff:.2e}")
  assert diff <= ATOL


def test_a_process_that_cannot_reach_the_coordinator_stops_with_a_message(tmp_path):
  # Process 1 of 2 alone: nobody serves the coordinator's port.
  timeout = 5
  args = ["--config", "configs/demo.py", "--workdir", str(tmp_path / "run"),
          f"--coordinator=127.0.0.1:{local_cpu.free_port()}", "--num_processes=2",
          "--process_id=1", f"--distributed_timeout={timeout}"]
  started = time.monotonic()
  out = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                       env=local_cpu.process_env(1), capture_output=True, text=True,
                       timeout=120)
  elapsed = time.monotonic() - started
  assert out.returncode == 1, out.stderr[-3000:]
  assert "process 1 of 2 (coordinator 127.0.0.1:" in out.stderr
  assert f"not every process reached the coordinator within {timeout} s" in out.stderr
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "run")
  assert elapsed < 60, elapsed


def test_sigterm_saves_the_step_it_names_and_the_same_command_resumes(start_checkpoint):
  root = start_checkpoint
  workdir, logs = root / "sigterm_single", root / "sigterm_single_logs"
  shutil.copytree(root / "start", workdir)
  logs.mkdir()
  # To the end (step 100, then an evaluation), no checkpoint on the way but the
  # preemption's.
  args = _args(root / "tfds", workdir, 0, train__checkpoint_every=1000)
  total = _FLAT["total_steps"]
  t0 = time.monotonic()
  run = _single(args, logs / "first.log")
  _wait_for(logs / "first.log", f"] [{START + 1}] train/", [run])
  run.send_signal(signal.SIGTERM)
  try:
    code = run.wait(timeout=60)
  except subprocess.TimeoutExpired:
    run.kill()
    pytest.fail("still running 60 s after SIGTERM:\n" + _read(logs / "first.log")[-3000:])
  paragraph = _stopped_paragraph(logs / "first.log")
  print(f"\n{paragraph}")
  assert code == 143, _read(logs / "first.log")[-3000:]
  saved = int(re.search(r"saved step (\d+)", paragraph).group(1))
  latest = os.path.join(workdir, "checkpoints", "latest")
  assert f"complete in {os.path.join(latest, str(saved))};" in paragraph
  assert "running the same command again resumes from it" in paragraph
  assert START + 1 <= saved < total
  assert _steps(workdir) == [START, saved]

  rerun = _single(args, logs / "second.log")
  _check_exit(rerun, logs / "second.log")
  second = _read(logs / "second.log")
  assert f"Resumed from step {saved} " in second and f"Final (step {total}):" in second
  assert _steps(workdir) == [START, saved, total]
  # Every step logged: the first run's up to the one it saved, the second's after it.
  assert f"] [{saved + 1}] train/" in second and f"] [{saved}] train/" not in second
  assert sorted(_train_scalars(workdir)) == list(range(START + 1, total + 1))
  print(f"SIGTERM test took {time.monotonic() - t0:.0f} s; saved step {saved}")
