r"""Train or evaluate DDFP.

  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo --mode eval
  python main.py --config configs/demo.py --workdir DIR --config.total_steps=100

The config file is locked: `--config.KEY=VALUE` may only override keys that exist.
On several hosts, run the same command on every host; JAX's distributed runtime is set
up from the environment (SLURM, Cloud TPU) or from --coordinator/--num_processes/
--process_id (launch/ has a script per target).

A multi-process run never waits forever: a process that cannot reach the others within
--distributed_timeout seconds stops with one paragraph; once running, a process whose
peer dies stops with one paragraph as soon as a collective with it fails, unless JAX's
distributed runtime ends it first with its own message (it does when the coordinator,
process 0, dies, or after --heartbeat_timeout seconds without a heartbeat from a peer).
Every error exits non-zero; the last complete checkpoint is left as it was.

SIGTERM (a scheduler's preemption or time limit, Cloud TPU maintenance, `kill`) makes
every process save the same step and stop with status 143 (128 + SIGTERM); the same
command resumes from that step.
"""
import os
import re
import sys
import threading
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)
from ddfp_jax import xla_cpu

# Before JAX starts its CPU backend: XLA reads XLA_FLAGS once (ddfp_jax/xla_cpu.py).
_XLA_CPU = xla_cpu.use_onednn_convolutions()

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming if possible) or "
                  "evaluate the latest checkpoint in --workdir.")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs "
                    "outside SLURM / Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run whose coordinator and "
                  "process ids JAX finds in the environment: Cloud TPU VM pod slices (the "
                  "TPU metadata), SLURM, Open MPI. Implied inside a SLURM job step with "
                  "several tasks and when JAX_COORDINATOR_ADDRESS or TPU_WORKER_HOSTNAMES is "
                  "set.")
flags.DEFINE_integer("distributed_timeout", 300, "Seconds a process of a multi-process run "
                     "waits for all the others to join before it stops with an error.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without a heartbeat after which a "
                     "process of a multi-process run counts as dead and the others stop.")
flags.mark_flags_as_required(["config", "workdir"])


# Extra seconds JAX's own connection timeout gets over --distributed_timeout, so that the
# watchdog below, which prints a readable paragraph, always fires first.
_JAX_TIMEOUT_MARGIN = 60
# Messages of the errors a collective or the distributed runtime raises when a peer process
# is gone or unreachable (gloo on CPU, NCCL on GPU, the coordination service).
_PEER_LOST = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|broken pipe|socket closed|heartbeat|"
    r"unavailable|deadline.?exceeded|coordination.?service|barrier|preempt", re.IGNORECASE)


def _cluster_environment() -> bool:
  """Whether the environment describes a multi-process job JAX can set itself up from."""
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env or "TPU_WORKER_HOSTNAMES" in env:
    return True
  # Under SLURM only inside an srun step with several tasks: a one-task job, or
  # `python main.py` typed in an salloc shell, is a plain single-process run.
  return "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def _fail(code: int, message: str) -> None:
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


def _initialize_distributed():
  """Joins the multi-process run described by the flags or the environment, if any."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      print("error: --coordinator needs --num_processes and --process_id too (the same "
            "--coordinator and --num_processes on every process, --process_id 0 to N-1).",
            file=sys.stderr, flush=True)
      sys.exit(2)
    args = (FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    who = (f"process {FLAGS.process_id} of {FLAGS.num_processes} (coordinator "
           f"{FLAGS.coordinator})")
  elif FLAGS.distributed or _cluster_environment():
    args = ()
    who = "this process (coordinator and process id from the SLURM / Cloud TPU environment)"
  else:
    return
  timeout = FLAGS.distributed_timeout

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
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  except (ValueError, TypeError, RuntimeError) as e:
    watchdog.cancel()
    reason = " ".join(str(e).split())
    print(f"error: the multi-process run cannot be set up ({reason}). Pass --coordinator "
          "HOST:PORT --num_processes N --process_id I on every process, or run inside a "
          "SLURM job step (srun) or on a Cloud TPU VM.", file=sys.stderr, flush=True)
    sys.exit(2)
  watchdog.cancel()


def _latest_checkpoint(workdir: str):
  """The newest complete step under workdir/checkpoints/latest (no orbax needed)."""
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints", "latest"))
             if n.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def _process_failed(error: BaseException, workdir: str) -> None:
  """One paragraph for an error in a multi-process run, then an immediate exit."""
  import jax  # pylint: disable=g-import-not-at-top
  me = f"process {jax.process_index()} of {jax.process_count()}"
  step = _latest_checkpoint(workdir)
  resume = (f"The last complete checkpoint, step {step}, is intact in "
            f"{os.path.join(workdir, 'checkpoints', 'latest')}; start every process again "
            "with the same command to resume from it." if step is not None else
            "No checkpoint had been written yet; starting again begins at step 0.")
  reason = " ".join(str(error).split())[:400]
  if _PEER_LOST.search(str(error)):
    _fail(1, f"{me} stopped: another process of the run is gone or unreachable, so the "
          f"collective operations cannot continue ({type(error).__name__}: {reason}). The "
          "process that failed first has the cause in its own log (or was killed: out of "
          f"memory, preemption, a time limit). {resume}")
  traceback.print_exc()
  _fail(1, f"{me} failed with {type(error).__name__}: {reason} (traceback above). It "
        f"stops now so that the other processes stop too instead of waiting for it. {resume}")


def _preempted(stop) -> None:
  """The paragraph (process 0 prints it) and exit status of a run stopped by SIGTERM.

  Every process gets here at the same step, so the exit is a normal one, together.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax import preemption  # pylint: disable=g-import-not-at-top
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


def _quiet_checkpoint_logs():
  """Orbax logs every save step at INFO; keep the console for progress and metrics."""
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)


def _load_config():
  """The config, or a one-paragraph error if its file cannot be loaded (loading is lazy)."""
  try:
    config = FLAGS.config
    config.keys()
    return config
  except (OSError, SyntaxError, AttributeError, ImportError) as e:
    reason = " ".join(str(e).split())
    print(f"error: the config file cannot be loaded ({reason}). Pass an existing file, "
          "e.g. --config configs/demo.py (paths are relative to the current directory).",
          file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
  del argv
  _quiet_checkpoint_logs()
  config = _load_config()
  # TensorFlow only feeds data: keep it off the accelerators JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  _initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax import trainer  # pylint: disable=g-import-not-at-top
  from ddfp_jax.config_check import ConfigError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data.pipeline import DatasetError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.preemption import Preempted  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("XLA:CPU convolutions: %s.", _XLA_CPU)
  try:
    if FLAGS.mode == "train":
      trainer.train_and_evaluate(config, FLAGS.workdir)
    else:
      trainer.evaluate_checkpoint(config, FLAGS.workdir)
  except Preempted as e:
    _preempted(e)
  except (ConfigError, trainer.NonFiniteError) as e:
    # Every process meets these at the same point: a normal exit, together.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except (DatasetError, FileNotFoundError) as e:
    # May concern one host only (its data directory): in a multi-process run, exit at once.
    _fail(1, str(e))
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    _process_failed(e, FLAGS.workdir)


def _parse_flags(argv):
  """absl's parser, with a one-paragraph error instead of a traceback for a bad override
  (a locked config refuses keys it does not have)."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    reason = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    if len(reason) > 1 and reason[0] == reason[-1] and reason[0] in "'\"":
      reason = reason[1:-1]
    print(f"error: the command line cannot be applied to the config: {reason}. Overrides "
          "take the form --config.KEY=VALUE where KEY is an existing field; every field and "
          "its meaning is in configs/base.py.", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
