r"""Why does a method gain (or not)? Measurements of finished runs on the validation set.

  python -m ddfp_jax.tools.diagnose --name demo_table4 --runs /tmp/compare/demo_table4
  python -m ddfp_jax.tools.diagnose --name one_run --config configs/demo.py --workdir DIR \
      -- --config.method=ddfp

For every run (each directory under --runs that the comparison harness finished, or the
one --workdir with its --config and overrides), the latest checkpoint is scored on the
labeled validation images, in inference mode:

- pseudo labels: of the ground-truth pixels of each class, the share whose teacher
  confidence passes `semi.threshold` (coverage) and the accuracy of those confident
  pixels. Semi-supervised consistency can only teach what the confident pseudo labels
  carry, so this bounds what the unlabeled data can contribute.
- for runs with a density (DDFP's flow): the flow's mean NLL per pixel of the teacher's
  features v (the mixture, as the perturbation reads it), and, on the pixels whose
  pseudo label is confident, the mean log-density of the student's features clean, after
  the density-descending perturbation, and after a random direction of the same norm
  (`ddfp.eps`), with the share of those pixels whose prediction still equals the pseudo
  label and the cross-entropy to it (the feature branch's loss), and the mean norm of the
  clean features (the scale eps is measured against).
- the training losses the trainer logged (TensorBoard), averaged over the last 20 % of the
  steps: in training the feature branch perturbs the strong view's features, so its loss
  next to the strong view's own says how much the perturbation adds. A density-descending step that lowers the density no more than a random one, or
  that never changes a prediction, cannot teach more than random noise does.

USSS runs have no teacher: for them each domain's validation set is measured as
`ddfp_jax.tools.usss_diagnosis` says (embedding norm, the entropies its loss minimises,
the entropy of the normalised embeddings, and how often the best label embedding is the
true class), beside the same training losses.

Written to OUT (default results/): NAME_diagnosis.json and NAME_diagnosis.md.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

import ddfp_jax  # noqa: F401  (before TensorFlow: see ddfp_jax/__init__.py)
from ddfp_jax.runtime import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DiagnoseError(RuntimeError):
  """A run that cannot be diagnosed as asked; the message says what to change."""


def load_config(config_file: str, overrides: Sequence[str]):
  """The config a run used, made ready (checked, preset applied, schedule resolved)
  exactly as main.py makes it."""
  from ddfp_jax.config import loading  # pylint: disable=import-outside-toplevel
  from ddfp_jax.training import trainer  # pylint: disable=import-outside-toplevel
  return trainer.ready_config(loading.load(config_file, overrides))


def config_args(argv: Sequence[str]):
  """(config file, overrides) from a main.py command line as the harness records it."""
  config_file, overrides, i = None, [], 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--config" and i + 1 < len(argv):
      config_file, i = argv[i + 1], i + 2
      continue
    if arg.startswith("--config="):
      config_file = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      overrides.append(arg)
    i += 1
  if config_file is None:
    raise DiagnoseError(f"the recorded command has no --config: {' '.join(argv)}")
  return config_file, overrides


def masked_mean(values, mask):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  weight = mask.astype(jnp.float32)
  return jnp.sum(values * weight), jnp.sum(weight)


def make_measure(config, state):
  """A jitted function of (images, labels, valid) -> sums of the measurements' terms."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ddfp_jax.methods import (  # pylint: disable=import-outside-toplevel
      feature_perturbation, get_method)
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models.resize import (  # pylint: disable=import-outside-toplevel
      resize_bilinear, resize_nearest)

  model = builders.build_model(config)
  k, ignore, tau = config.data.num_classes, config.data.ignore_label, config.semi.threshold
  teacher = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  student = {"params": state.params, "batch_stats": state.batch_stats}
  make_log_density = get_method(config.method).make_log_density
  log_density = make_log_density(config) if make_log_density else None

  def teacher_outputs(images):
    """The teacher's pixel features v and logits (inference mode), computed once."""
    v = model.apply(teacher, model.apply(teacher, images, False, method="encode"), False,
                    method="features")
    return v, model.apply(teacher, v, method="classify")

  def pseudo_label_terms(images, labels, keep, logits):
    probs = jax.nn.softmax(resize_bilinear(logits, images.shape[1:3]), axis=-1)
    conf, pred = probs.max(-1), probs.argmax(-1)
    sure = keep & (conf > tau)
    classes = jnp.arange(k)
    is_c = (labels[..., None] == classes) & keep[..., None]
    total = jnp.sum(is_c, axis=(0, 1, 2))
    confident = jnp.sum(is_c & sure[..., None], axis=(0, 1, 2))
    correct = jnp.sum(is_c & (sure & (pred == labels))[..., None], axis=(0, 1, 2))
    return {"total": total, "confident": confident, "correct": correct}

  def density_terms(images, keep, rng, t_v, t_logits):
    log_p = lambda v: log_density(state.extra, v.astype(jnp.float32))
    grid = t_v.shape[1:3]
    valid = resize_nearest(jnp.where(keep, 0, ignore).astype(jnp.int32), grid) != ignore
    probs = jax.nn.softmax(t_logits, axis=-1)
    pseudo = probs.argmax(-1)
    confident = valid & (probs.max(-1) > tau)
    out = {}
    out["teacher_nll"] = masked_mean(-log_p(t_v), valid)
    views, to_logits = feature_perturbation.inference_views(
        config, model, student, images, log_p, confident, ("density_descending", "random"),
        rng)
    out["feature_norm"] = masked_mean(jnp.linalg.norm(views["clean"].astype(jnp.float32),
                                                       axis=-1), confident)
    for name, v in views.items():
      out[f"{name}_log_density"] = masked_mean(log_p(v), confident)
      logits = to_logits(v)
      kept = jnp.argmax(logits, -1) == pseudo
      out[f"{name}_keeps_pseudo_label"] = masked_mean(kept.astype(jnp.float32), confident)
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), pseudo[..., None], -1)[..., 0]
      out[f"{name}_ce"] = masked_mean(ce, confident)
    return out

  @jax.jit
  def measure(images, labels, keep, rng):
    t_v, t_logits = teacher_outputs(images)
    terms = {"pseudo_labels": pseudo_label_terms(images, labels, keep, t_logits)}
    if log_density is not None:
      terms["density"] = density_terms(images, keep, rng, t_v, t_logits)
    return terms
  return measure


def validation_sums(config, measure, rng=None) -> Dict:
  """The terms of `measure(images, labels, keep[, key])` summed over `config`'s validation
  set; `keep` marks the labeled pixels of the real (not padded) images, and each batch
  gets a key split from `rng` when one is given."""
  import jax  # pylint: disable=import-outside-toplevel
  from ddfp_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  ignore = config.data.ignore_label
  sums: Dict = {}
  for batch in pipeline.eval_batches(config, local_device_count=1):
    label, valid = batch["label"][0], batch["valid"][0]
    keep = valid[:, None, None] & (label != ignore)
    keys = ()
    if rng is not None:
      rng, key = jax.random.split(rng)
      keys = (key,)
    terms = jax.device_get(measure(batch["image"][0], label, keep, *keys))
    sums = terms if not sums else jax.tree.map(lambda a, b: a + b, sums, terms)
  return sums


def diagnose(config, state) -> dict:
  """The measurements of one state on the validation set (module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel
  if config.method == "usss":
    from ddfp_jax.tools import usss_diagnosis  # pylint: disable=import-outside-toplevel
    return {"usss": usss_diagnosis.diagnose(config, state)}
  sums = validation_sums(config, make_measure(config, state), jax.random.key(config.seed))
  return summarize(sums, config.semi.threshold)


def summarize(sums: dict, threshold: float) -> dict:
  """Ratios from the summed terms: coverage and accuracy per class, background vs the
  rest; densities and agreement as means over the pixels they were summed over."""
  pl = {key: np.asarray(value, np.int64) for key, value in sums["pseudo_labels"].items()}

  def ratio(mask):
    t, s, r = pl["total"][mask].sum(), pl["confident"][mask].sum(), pl["correct"][mask].sum()
    return {"pixels": int(t), "coverage": float(s / max(t, 1)),
            "accuracy_of_confident": float(r / max(s, 1))}

  k = len(pl["total"])
  background = np.arange(k) == 0
  result = {"threshold": threshold, "background": ratio(background),
            "other_classes": ratio(~background),
            "per_class": [ratio(np.arange(k) == c) for c in range(k)]}
  if "density" in sums:
    result["density"] = {name: float(total / max(count, 1.0))
                         for name, (total, count) in sums["density"].items()}
  return result


def late_training_losses(run_dir: str, tail: float = 0.2) -> Dict[str, float]:
  """Mean of each logged `train/loss*` scalar over the last `tail` of the logged steps,
  read from the run's TensorBoard event files (what the trainer logged, in train mode on
  the training views: the feature branch's loss on perturbed strong-view features)."""
  import glob  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  series: Dict[str, Dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag.startswith("train/loss"):
          number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                    else float(value.simple_value))
          series.setdefault(value.tag[len("train/"):], {})[event.step] = number
  if not series:
    return {}
  last = max(step for steps in series.values() for step in steps)
  start = (1.0 - tail) * last
  return {name: float(np.mean([v for step, v in steps.items() if step > start]))
          for name, steps in sorted(series.items()) if any(step > start for step in steps)}


def restore(config, workdir: str):
  import jax  # pylint: disable=import-outside-toplevel
  from ddfp_jax.training.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  from ddfp_jax.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    if ckpt.latest_step() is None:
      raise DiagnoseError(f"no checkpoint in {workdir}/checkpoints: train the run first, "
                          "or point at the directory of a finished run.")
    return ckpt.restore(create_train_state(config, jax.random.key(config.seed)))


def harness_runs(root: str) -> List[dict]:
  """The finished runs under a harness directory, each as its recorded result."""
  if not os.path.isdir(root):
    raise DiagnoseError(f"{root} is not a directory: pass the harness's WORKDIR/NAME.")
  runs = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      # A run the harness reused from another table has its checkpoints there.
      record["run_dir"] = record.get("reused_from") or os.path.join(root, name)
      runs.append(record)
  if not runs:
    raise DiagnoseError(f"no finished run (a result.json) under {root}.")
  return runs


def _argv_of(record: dict) -> List[str]:
  if "argv" in record:
    return list(record["argv"])
  return record["command"].split()


def markdown(name: str, rows: Sequence[dict], command: str) -> str:
  lines = [f"# {name}: diagnosis", "", f"`{command}`", ""]
  usss_rows = [r for r in rows if "usss" in r["diagnosis"]]
  if usss_rows:
    from ddfp_jax.tools import usss_diagnosis  # pylint: disable=import-outside-toplevel
    lines += usss_diagnosis.markdown(usss_rows) + [""]
  taught = [r for r in rows if "usss" not in r["diagnosis"]]
  if taught:
    lines += _teacher_lines(taught)
  return "\n".join(lines + _loss_lines(rows)) + "\n"


def _teacher_lines(rows: Sequence[dict]) -> List[str]:
  lines = ["Teacher pseudo labels on the validation scenes at the threshold (coverage: share of "
           "a class's pixels whose confidence passes it; accuracy: share of those that are "
           "right), in %:", "",
           "| run | step | background coverage / accuracy | other classes coverage / accuracy |",
           "|---|---|---|---|"]
  for r in rows:
    d = r["diagnosis"]
    cell = lambda s: f"{100 * s['coverage']:.1f} / {100 * s['accuracy_of_confident']:.1f}"
    lines.append(f"| {r['run']} | {r['step']} | {cell(d['background'])} | "
                 f"{cell(d['other_classes'])} |")
  k = max(len(r["diagnosis"]["per_class"]) for r in rows)
  lines += ["", "Coverage / accuracy per class (%):", "",
            "| run | " + " | ".join(str(c) for c in range(k)) + " |", "|---|" + "---|" * k]
  for r in rows:
    lines.append(f"| {r['run']} | " + " | ".join(
        f"{100 * s['coverage']:.0f} / {100 * s['accuracy_of_confident']:.0f}"
        for s in r["diagnosis"]["per_class"]) + " |")
  dense = [r for r in rows if "density" in r["diagnosis"]]
  if dense:
    lines += ["", "The flow (mean over pixels; log-densities of the student's features on "
              "the confident pixels; 'keeps': share of those pixels still predicted as their "
              "pseudo label):", "",
              "| run | teacher NLL | ‖v‖ | log p clean | log p density-descending | log p random "
              "| keeps: clean / density-descending / random | CE: clean / density-descending / "
              "random |", "|---|---|---|---|---|---|---|---|"]
    for r in dense:
      d = r["diagnosis"]["density"]
      lines.append(
          f"| {r['run']} | {d['teacher_nll']:.1f} | {d['feature_norm']:.1f} | "
          f"{d['clean_log_density']:.1f} | "
          f"{d['density_descending_log_density']:.1f} | {d['random_log_density']:.1f} | "
          f"{100 * d['clean_keeps_pseudo_label']:.1f} / "
          f"{100 * d['density_descending_keeps_pseudo_label']:.1f} / "
          f"{100 * d['random_keeps_pseudo_label']:.1f} | {d['clean_ce']:.3f} / "
          f"{d['density_descending_ce']:.3f} / {d['random_ce']:.3f} |")
  return lines


def _loss_lines(rows: Sequence[dict]) -> List[str]:
  lines = []
  logged = [r for r in rows if r.get("late_training_losses")]
  if logged:
    names = sorted({k for r in logged for k in r["late_training_losses"]})
    lines += ["", "Training losses as the trainer logged them (train mode, training views), "
              "mean over the last 20 % of the logged steps:", "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in logged:
      losses = r["late_training_losses"]
      lines.append(f"| {r['run']} | " + " | ".join(
          f"{losses[n]:.3f}" if n in losses else "-" for n in names) + " |")
  return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ddfp_jax.tools.diagnose",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--name", required=True, help="results/NAME_diagnosis.{json,md}")
  parser.add_argument("--runs", default=None, help="a harness directory (WORKDIR/NAME)")
  parser.add_argument("--config", default=None, help="with --workdir: the run's config")
  parser.add_argument("--workdir", default=None, help="one run's directory")
  parser.add_argument("--out", default=os.path.join(REPO, "results"))
  parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE (after --)")
  args = parser.parse_args(argv)
  xla_cpu.use_onednn_convolutions()
  try:
    if args.runs:
      records = harness_runs(args.runs)
      jobs = [(r["label"] + f"_s{r['seed']}", r["run_dir"], *config_args(_argv_of(r)))
              for r in records]
    elif args.workdir and args.config:
      jobs = [(os.path.basename(os.path.normpath(args.workdir)), args.workdir, args.config,
               list(args.overrides))]
    else:
      raise DiagnoseError("name the runs: --runs WORKDIR/NAME (a harness sweep), or "
                          "--config FILE --workdir DIR [-- overrides] (one run).")
    rows = []
    for run, run_dir, config_file, overrides in jobs:
      config = load_config(config_file, overrides)
      state = restore(config, run_dir)
      rows.append({"run": run, "run_dir": run_dir, "step": int(state.step),
                   "method": config.method, "diagnosis": diagnose(config, state),
                   "late_training_losses": late_training_losses(run_dir)})
      print(f"diagnosed {run} (step {rows[-1]['step']})", flush=True)
  except DiagnoseError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  command = "python -m ddfp_jax.tools.diagnose " + " ".join(
      argv if argv is not None else sys.argv[1:])
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{args.name}_diagnosis.json"), "w") as f:
    json.dump({"command": command, "runs": rows}, f, indent=1)
  with open(os.path.join(args.out, f"{args.name}_diagnosis.md"), "w") as f:
    f.write(markdown(args.name, rows, command))
  print(f"results: {os.path.join(args.out, args.name)}_diagnosis.{{json,md}}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
