"""Joining a multi-process run, and what a process says when a run cannot go on.

`main.py` calls `initialize` before anything else touches JAX's backends, and the three
failure reporters when training stops: each prints one paragraph (what happened, what to
do, where the last checkpoint is) and exits non-zero. A multi-process run never waits
forever: a process that cannot reach the others within `timeout` seconds stops with one
paragraph, and a process whose peer dies stops as soon as a collective with it fails.
"""
import os
import re
import sys
import threading
import traceback

# Extra seconds JAX's own connection timeout gets over --distributed_timeout, so that the
# watchdog below, which prints a readable paragraph, always fires first.
_JAX_TIMEOUT_MARGIN = 60
# Messages of the errors a collective or the distributed runtime raises when a peer process
# is gone or unreachable (gloo on CPU, NCCL on GPU, the coordination service).
_PEER_LOST = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|broken pipe|socket closed|heartbeat|"
    r"unavailable|deadline.?exceeded|coordination.?service|barrier|preempt", re.IGNORECASE)


def cluster_environment() -> bool:
  """Whether the environment describes a multi-process job JAX can set itself up from."""
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env or "TPU_WORKER_HOSTNAMES" in env:
    return True
  # Under SLURM only inside an srun step with several tasks: a one-task job, or
  # `python main.py` typed in an salloc shell, is a plain single-process run.
  return "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def fail(code: int, message: str) -> None:
  """Prints one paragraph and exits with `code`.

  In a multi-process run the exit is immediate (no interpreter shutdown): the normal exit
  would wait at JAX's shutdown barrier for peers that are gone or blocked in a collective
  with this process; exiting at once makes their collectives fail, so they stop too.
  """
  print(f"error: {message}", file=sys.stderr, flush=True)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    sys.stdout.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def initialize(coordinator=None, num_processes=None, process_id=None, distributed=False,
               timeout: int = 300, heartbeat_timeout: int = 100) -> None:
  """Joins the multi-process run described by the arguments (main.py's flags of the same
  names) or the environment, if any; exits with one paragraph if it cannot."""
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator:
    if num_processes is None or process_id is None:
      print("error: --coordinator needs --num_processes and --process_id too (the same "
            "--coordinator and --num_processes on every process, --process_id 0 to N-1).",
            file=sys.stderr, flush=True)
      sys.exit(2)
    args = (coordinator, num_processes, process_id)
    who = f"process {process_id} of {num_processes} (coordinator {coordinator})"
  elif distributed or cluster_environment():
    args = ()
    who = "this process (coordinator and process id from the SLURM / Cloud TPU environment)"
  else:
    return

  def give_up():
    print(f"error: {who} could not join the multi-process run: not every process reached "
          f"the coordinator within {timeout} s. Start all processes with the same "
          "--coordinator and --num_processes and distinct --process_id values from 0 (or in "
          "the same SLURM job step / on every TPU worker), make sure process 0 is running and "
          "its port is free and reachable from this host (firewall, proxy variables), or "
          "allow more time with --distributed_timeout. Nothing was written.",
          file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access

  watchdog = threading.Timer(timeout, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(*args, initialization_timeout=timeout + _JAX_TIMEOUT_MARGIN,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except (ValueError, TypeError, RuntimeError) as e:
    watchdog.cancel()
    reason = " ".join(str(e).split())
    print(f"error: the multi-process run cannot be set up ({reason}). Pass --coordinator "
          "HOST:PORT --num_processes N --process_id I on every process, or run inside a "
          "SLURM job step (srun) or on a Cloud TPU VM.", file=sys.stderr, flush=True)
    sys.exit(2)
  watchdog.cancel()


def latest_checkpoint(workdir: str):
  """The newest complete step under workdir/checkpoints/latest (no orbax needed)."""
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest"))
             if n.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def process_failed(error: BaseException, workdir: str) -> None:
  """One paragraph for an error in a multi-process run, then an immediate exit."""
  import jax  # pylint: disable=g-import-not-at-top
  me = f"process {jax.process_index()} of {jax.process_count()}"
  step = latest_checkpoint(workdir)
  resume = (f"The last complete checkpoint, step {step}, is intact in "
            f"{os.path.join(workdir, 'checkpoints', 'latest')}; start every process again "
            "with the same command to resume from it." if step is not None else
            "No checkpoint had been written yet; starting again begins at step 0.")
  reason = " ".join(str(error).split())[:400]
  if _PEER_LOST.search(str(error)):
    fail(1, f"{me} stopped: another process of the run is gone or unreachable, so the "
          f"collective operations cannot continue ({type(error).__name__}: {reason}). The "
          "process that failed first has the cause in its own log (or was killed: out of "
          f"memory, preemption, a time limit). {resume}")
  traceback.print_exc()
  fail(1, f"{me} failed with {type(error).__name__}: {reason} (traceback above). It "
        f"stops now so that the other processes stop too instead of waiting for it. {resume}")


def preempted(stop) -> None:
  """The paragraph (process 0 prints it) and exit status of a run stopped by SIGTERM.

  Every process gets here at the same step, so the exit is a normal one, together.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import preemption  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    many = jax.process_count() > 1
    print(f"stopped: SIGTERM received (preemption, a time limit, maintenance or kill), so "
          f"{'every process' if many else 'the run'} saved step {stop.step} and stopped. "
          f"The checkpoint of step {stop.step} is complete in "
          f"{os.path.join(stop.directory, str(stop.step))}; running the same command again"
          f"{' on every process' if many else ''} resumes from it. Exit status "
          f"{preemption.EXIT_CODE} (128 + SIGTERM) tells the scheduler that the run was "
          "terminated, not finished.", file=sys.stderr, flush=True)
  sys.exit(preemption.EXIT_CODE)
