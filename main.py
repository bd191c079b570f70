r"""Train or evaluate a method of ddfp-jax (DDFP by default).

  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo --mode eval
  python main.py --config configs/demo.py:fixmatch --workdir DIR --config.total_steps=100

The part after the colon picks the method (a key of ddfp_jax.methods.METHODS) in config
files that take one; `--config.method=NAME` does the same for any config. The config
file is locked: `--config.KEY=VALUE` may only override keys that exist.
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
import difflib
import os
import re
import sys
from typing import Optional

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)
from ddfp_jax.runtime import distributed, xla_cpu

# Before JAX starts its CPU backend: XLA reads XLA_FLAGS once (ddfp_jax/runtime/xla_cpu.py).
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
  _check_workdir(FLAGS.workdir)
  config = _load_config()
  # TensorFlow only feeds data: keep it off the accelerators JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.distributed, FLAGS.distributed_timeout,
                         FLAGS.heartbeat_timeout)
  import jax  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from ddfp_jax.config.check import ConfigError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.data.pipeline import DatasetError  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.preemption import Preempted  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("XLA:CPU convolutions: %s.", _XLA_CPU)
  try:
    if FLAGS.mode == "train":
      trainer.train_and_evaluate(config, FLAGS.workdir)
    else:
      trainer.evaluate_checkpoint(config, FLAGS.workdir)
  except Preempted as e:
    distributed.preempted(e)
  except (ConfigError, trainer.NonFiniteError, CheckpointError) as e:
    # Every process meets these at the same point: a normal exit, together.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except (DatasetError, FileNotFoundError) as e:
    # May concern one host only (its data directory): in a multi-process run, exit at once.
    distributed.fail(1, str(e))
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    distributed.process_failed(e, FLAGS.workdir)


# What each required flag is, for the message when it is missing.
_REQUIRED = {
    "config": "the config file, e.g. --config configs/demo.py (or configs/demo.py:fixmatch)",
    "workdir": "the directory for this run's checkpoints and metrics, created if it does "
               "not exist, e.g. --workdir /tmp/ddfp_demo",
}


def _usage_error(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with a one-paragraph error instead of a traceback for a bad override
  (a locked config refuses keys it does not have) or a missing required flag."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    missing = re.search(r"Flag --(\w+) must have a value other than None", str(e))
    if missing and missing.group(1) in _REQUIRED:
      name = missing.group(1)
      _usage_error(f"--{name} is required: {_REQUIRED[name]}. Usage: python main.py "
                   "--config configs/demo.py --workdir DIR [--mode eval] "
                   "[--config.KEY=VALUE ...]; `python main.py --help` lists every flag.")
    unknown = _unknown_override(argv)
    if unknown:
      _usage_error(f"{unknown}. Every field and its meaning is in configs/base.py "
                   "(ddfp_jax/config/defaults.py); a method's own block is in "
                   "ddfp_jax/methods/<method>.py.")
    reason = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    if len(reason) > 1 and reason[0] == reason[-1] and reason[0] in "'\"":
      reason = reason[1:-1]
    parsing = re.search(r"Error whilst parsing config file: Traceback .* "
                        r"(?:\w+(?:Error|Exception)): (.*)$", reason)
    if parsing:
      # The config file's get_config refused what came after its colon: its own message,
      # without the traceback ml_collections wraps it in.
      _usage_error(f"the config file refused its argument: {parsing.group(1).rstrip('.')}.")
    _usage_error(f"the command line cannot be applied to the config: {reason}. Overrides "
                 "take the form --config.KEY=VALUE where KEY is an existing field; every "
                 "field and its meaning is in configs/base.py.")


def _unknown_override(argv) -> Optional[str]:
  """Which `--config.KEY=VALUE` names a key the config file does not have, with the keys
  that are there; None if every key exists (or the file cannot be loaded)."""
  config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_file is None and "--config" in argv[:-1]:
    config_file = argv[argv.index("--config") + 1]
  if config_file is None:
    return None
  from ddfp_jax.config import loading  # pylint: disable=g-import-not-at-top
  try:
    config = loading.load(config_file)
  except Exception:  # pylint: disable=broad-except  (_load_config reports a bad file)
    return None
  for arg in argv:
    found = re.match(r"--config\.([\w.]+)(=|$)", arg)
    if not found:
      continue
    node, parts = config, found.group(1).split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict):
        return (f"{arg}: '{'.'.join(parts[:depth])}' is a value, not a block of keys")
      if part not in node:
        from ddfp_jax.config import check  # pylint: disable=g-import-not-at-top
        now = check.replacement(found.group(1))
        if now:
          return (f"{arg}: the config has no key '{found.group(1)}' any more; it was "
                  f"replaced by {now}")
        where = ".".join(parts[:depth])
        close = difflib.get_close_matches(part, list(node.keys()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return (f"{arg}: the config has no key '{'.'.join(parts[:depth + 1])}'{hint}; the "
                f"keys {'under ' + repr(where) if where else 'at the top'} are "
                f"{', '.join(sorted(node.keys()))}")
      node = node[part]
  return None


def _check_workdir(workdir: str) -> None:
  """A workdir that cannot hold a run stops before anything is loaded."""
  path = os.path.abspath(workdir)
  if "://" in workdir:
    return   # a bucket: orbax and the writers report their own errors
  if os.path.exists(path) and not os.path.isdir(path):
    _usage_error(f"--workdir {workdir} is an existing file, not a directory. Pass a "
                 "directory (it is created if it does not exist), e.g. --workdir "
                 f"{workdir}_run; the file is left as it is.")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    _usage_error(f"--workdir {workdir} cannot be created: {parent} is a file. Pass a "
                 "directory path.")
  # Evaluation only reads the workdir; training writes it.
  if FLAGS.mode == "train" and not os.access(parent, os.W_OK | os.X_OK):
    _usage_error(f"--workdir {workdir} cannot be written: {parent} is not writable by "
                 "this user. Pass a directory you can write to.")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
