r"""Train or evaluate DDFP.

  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo --mode eval
  python main.py --config configs/demo.py --workdir DIR --config.total_steps=100

The config file is locked: `--config.KEY=VALUE` may only override keys that exist.
On several hosts, run the same command on every host; JAX's distributed runtime is set
up from the environment (SLURM, Cloud TPU) or from --coordinator/--num_processes/
--process_id.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)

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
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator:
    jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                     "JAX_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()


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
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    if FLAGS.mode == "train":
      trainer.train_and_evaluate(config, FLAGS.workdir)
    else:
      trainer.evaluate_checkpoint(config, FLAGS.workdir)
  except (ConfigError, DatasetError, trainer.NonFiniteError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


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
