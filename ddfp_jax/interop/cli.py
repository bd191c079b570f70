r"""The command line of the PyTorch import: ImageNet ResNets, the release's DeepLabV3+ and
its whole checkpoints, and the USSS release's models.

  python -m ddfp_jax.interop.cli --input resnet101.pth --output resnet101.npz
  python -m ddfp_jax.interop.cli --input ckpt_best.pth --output ddfp_teacher.npz \
      --kind segmentation --key teacher_state
  python -m ddfp_jax.interop.cli --input ckpt_best.pth --kind release_checkpoint \
      --config configs/pascal_732.py --workdir DIR [--config.KEY=VALUE ...]
  python -m ddfp_jax.interop.cli --input model_best.pth --kind usss_checkpoint \
      --label_embeddings label_embedding.pt \
      --config configs/usss/cityscapes_camvid_100.py --workdir DIR [--config.KEY=VALUE ...]

Kinds backbone and segmentation (`ddfp_jax.interop.names`) write an `.npz` for
`config.model.pretrained` (`ddfp_jax.interop.pretrained.convert_file`); the third,
release_checkpoint, writes the release's whole training checkpoint into a run directory
(`ddfp_jax.interop.release`), with the config parsed as main.py parses it; the fourth,
usss_checkpoint, does the same for the USSS release's `model_best.pth` or
`checkpoint.pth.tar` (`ddfp_jax.interop.usss_release`).
"""
import argparse
import sys
from typing import Optional, Sequence

from ddfp_jax.interop.names import KINDS
from ddfp_jax.interop.pretrained import convert_file
from ddfp_jax.interop.release import import_release_checkpoint
from ddfp_jax.interop.usss_release import import_usss_checkpoint

RELEASE_CHECKPOINT = "release_checkpoint"
USSS_CHECKPOINT = "usss_checkpoint"
RUN_KINDS = (RELEASE_CHECKPOINT, USSS_CHECKPOINT)   # written into a run directory


def load_config(config_file: str, overrides: Sequence[str] = ()):
  """A config file with `--config.KEY=VALUE` overrides, parsed as main.py parses them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  bad = [a for a in overrides if not a.startswith("--config.")]
  if bad:
    raise ValueError(f"unrecognised arguments: {' '.join(bad)}")
  argv = ["ddfp_jax.interop.cli", f"--config={config_file}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    config = values.config
    config.keys()  # loading is lazy: a missing file fails here
  except (flags.Error, OSError, SyntaxError, AttributeError, ImportError, KeyError,
          TypeError) as e:
    reason = " ".join(str(e).split())
    raise ValueError(f"the config cannot be loaded ({reason})") from e
  return config


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line (see the module docstring); returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m ddfp_jax.interop.cli",
      description="Convert PyTorch ResNet / DeepLabV3+ weights into an .npz for "
                  "config.model.pretrained, or the release's training checkpoint into a "
                  "checkpoint that main.py --mode eval scores. Further --config.KEY=VALUE "
                  "arguments override the config, as on main.py.")
  parser.add_argument("--input", required=True, help="PyTorch file (.pth / .pt).")
  parser.add_argument("--output", default=None,
                      help="Where to write the .npz (kinds backbone and segmentation).")
  parser.add_argument("--kind", choices=KINDS + RUN_KINDS, default=None,
                      help="What the file holds (default: detected among backbone and "
                           "segmentation). 'backbone' on a segmentation file converts only "
                           "its encoder; 'release_checkpoint' converts the student, teacher "
                           "and flow of the release's ckpt.pth into --workdir; "
                           "'usss_checkpoint' the USSS release's model_best.pth or "
                           "checkpoint.pth.tar.")
  parser.add_argument("--key", default=None,
                      help="Checkpoint entry holding the state dict, e.g. teacher_state "
                           "(default: model_state, state_dict or model).")
  parser.add_argument("--label_embeddings", default=None,
                      help="usss_checkpoint: the run's label_embedding.pt (needed to train "
                           "on with its entropies; scoring does not read it).")
  parser.add_argument("--release_datasets", default=None,
                      help="usss_checkpoint: the release's dataset (IDD, CS, CVD, SUN, NYU_S) "
                           "of each domain, comma-separated in the config's domain order "
                           "(default: from the domain names).")
  parser.add_argument("--config", default=None,
                      help="release_checkpoint, usss_checkpoint: the config file the checkpoint will be "
                           "evaluated (or trained further) with.")
  parser.add_argument("--workdir", default=None,
                      help="release_checkpoint, usss_checkpoint: the run directory to write "
                           "checkpoints/latest/STEP into (must hold no checkpoint yet).")
  parser.add_argument("--step", type=int, default=0,
                      help="release_checkpoint, usss_checkpoint: the step to store the state under.")
  parser.add_argument("--trust_pickle", action="store_true",
                      help="Let torch.load unpickle arbitrary objects.")
  args, rest = parser.parse_known_args(argv)
  try:
    if args.kind in RUN_KINDS:
      if not args.config or not args.workdir:
        parser.error(f"--kind {args.kind} needs --config and --workdir")
      from ddfp_jax.config.check import check_config  # pylint: disable=g-import-not-at-top
      config = load_config(args.config, rest)
      check_config(config)
      if args.kind == RELEASE_CHECKPOINT:
        print(import_release_checkpoint(args.input, config, args.workdir, args.step,
                                        args.trust_pickle))
      else:
        datasets = args.release_datasets.split(",") if args.release_datasets else None
        report, imported = import_usss_checkpoint(
            args.input, config, args.workdir, args.step, args.label_embeddings, datasets,
            args.trust_pickle)
        print(report)
        if args.label_embeddings:   # the import wrote them; the run reads that file
          rest = [*rest, "--config.usss.label_embeddings=file",
                  f"--config.usss.embedding_file={imported.usss.embedding_file}"]
      print("Score it with: python main.py " + " ".join(
          [f"--config {args.config}", f"--workdir {args.workdir}", "--mode eval", *rest]))
      return 0
    if rest:
      parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if not args.output:
      parser.error(f"--output is required (except with --kind {' or '.join(RUN_KINDS)})")
    print(convert_file(args.input, args.output, args.kind, args.key, args.trust_pickle))
  except (ValueError, KeyError, ImportError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
