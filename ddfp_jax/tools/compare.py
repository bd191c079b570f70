r"""Compares methods on one config: methods x seeds (x one swept key), resumable.

  python -m ddfp_jax.tools.compare --name demo_table4 --config configs/demo.py \
      --methods supervised fixmatch ddfp random cct_noise channel_dropout vat \
      --variant upper_bound=supervised,data.all_labeled=True \
      --seeds 0 1 2 --workdir /tmp/compare --parallel 2
  python -m ddfp_jax.tools.compare --name demo_eps --config configs/demo.py \
      --methods ddfp --sweep ddfp.eps=0.5,1,2,3,4 --seeds 0 1 2 --workdir /tmp/compare

Every run is `python main.py --config CONFIG --workdir WORKDIR/NAME/RUN
--config.method=METHOD --config.seed=SEED [overrides]`, as a separate process. A run
that finished has a `result.json` in its directory and is not run again; a run that was
stopped (the harness killed, a machine lost) is started again with the same command and
resumes from its last checkpoint, so the same command continues a half-finished sweep.
A run whose whole config (fingerprinted) equals a finished run's under the same WORKDIR,
from any table, is not run again: its result is reused (`reused_from` names it).
`--config_per_method` makes every run load CONFIG:METHOD, for a config file that sets a
method's own recipe from the method it is given (configs/demo.py for dgcl).
`--parallel N` runs N at once, each pinned to its share of this process's CPUs (on a GPU
machine, give each run its own devices with --devices_per_run instead); the datasets of
every run are prepared first, one after the other, so that no two runs build one at once.

Written to OUT (default results/): NAME.json (every run's final metrics, per-class IoU,
validation mIoU over the steps, wall time, the command, hardware and date; the mean and
sample standard deviation over seeds of each variant), NAME.md (the table), NAME_miou.png
(final mIoU per variant with error bars) and NAME_curves.png (validation mIoU over
training steps, mean over seeds). `--report_only` rewrites them from the finished runs.
The same command works for real-data configs (e.g. configs/ddfp/pascal_732.py on GPUs).
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ddfp_jax.runtime import hostinfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT = "result.json"          # in a run's directory once it finished
HISTORY = "eval_history.jsonl"  # written by the trainer at every evaluation
RUN_INFO = "run_info.json"      # written by the trainer when a run starts
MODELS = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the comparison: a method with its overrides."""
  label: str
  method: str
  overrides: Tuple[Tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Run:
  variant: Variant
  seed: int

  @property
  def name(self) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in self.variant.label)
    return f"{safe}_s{self.seed}"


class HarnessError(RuntimeError):
  """A sweep that cannot be run as asked; the message says what to change."""


def _split_top_level(text: str) -> List[str]:
  """Splits on commas outside brackets, so tuple values stay whole: "a=(1,2),b=3"."""
  parts, depth, current = [], 0, ""
  for char in text:
    if char in "([":
      depth += 1
    elif char in ")]":
      depth -= 1
    if char == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += char
  return parts + [current]


def parse_variant(text: str) -> Variant:
  """"LABEL=METHOD[,KEY=VALUE...]" -> Variant (values may be tuples: "(0.75,1.25)")."""
  label, sep, rest = text.partition("=")
  if not sep or not rest:
    raise HarnessError(f"--variant {text!r} must read LABEL=METHOD[,KEY=VALUE...], e.g. "
                       "upper_bound=supervised,data.all_labeled=True.")
  method, *pairs = _split_top_level(rest)
  overrides = []
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise HarnessError(f"--variant {text!r}: {pair!r} is not KEY=VALUE.")
    overrides.append((key, value))
  return Variant(label, method, tuple(overrides))


def parse_sweep(text: Optional[str]) -> Tuple[Optional[str], List[str]]:
  """"KEY=V1,V2,..." -> (KEY, [V1, V2, ...]); None -> (None, [])."""
  if not text:
    return None, []
  key, sep, values = text.partition("=")
  if not sep or not values:
    raise HarnessError(f"--sweep {text!r} must read KEY=V1,V2,..., e.g. ddfp.eps=1,2,4,8.")
  return key, _split_top_level(values)


def variants(methods: Sequence[str], extra: Sequence[str],
             sweep: Optional[str]) -> List[Variant]:
  """The rows: each method, each --variant; with a sweep, each of them at each value."""
  rows = [Variant(m, m) for m in methods] + [parse_variant(v) for v in extra]
  key, values = parse_sweep(sweep)
  if key is None:
    return rows
  return [Variant(f"{v.label}@{key}={value}", v.method, v.overrides + ((key, value),))
          for v in rows for value in values]


def config_flags_of(run: Run, common: Sequence[str]) -> List[str]:
  """The run's `--config.KEY=VALUE` flags: method, seed, the common ones, its own; `{seed}`
  in a variant's value is the run's seed (e.g. usss.init_from=DIR/day_s{seed}: a
  fine-tuning row starts from the source row's run of the same seed)."""
  overrides = [f"--config.{k}={v.replace('{seed}', str(run.seed))}"
               for k, v in run.variant.overrides]
  return [f"--config.method={run.variant.method}", f"--config.seed={run.seed}", *common,
          *overrides]


def sources_of(run: Run, runs: Sequence[Run], root: str, common: Sequence[str]) -> List[Run]:
  """The runs of this sweep whose directory is the value of one of `run`'s flags (a
  fine-tuning row's usss.init_from=WORKDIR/NAME/day_s{seed}): `run` starts once they
  have finished."""
  values = {os.path.normpath(flag.split("=", 1)[1]) for flag in config_flags_of(run, common)
            if "=" in flag}
  return [other for other in runs
          if other != run and os.path.normpath(os.path.join(root, other.name)) in values]


def command(config: str, run_dir: str, run: Run, common: Sequence[str]) -> List[str]:
  return [sys.executable, os.path.join(REPO, "main.py"), "--config", config, "--workdir",
          run_dir, *config_flags_of(run, common)]


def load_run_config(config: str, run: Run, common: Sequence[str]):
  """The run's whole config as main.py loads it, or None if it cannot be loaded here (the
  run itself will then say what is wrong)."""
  from ddfp_jax.config import loading  # pylint: disable=import-outside-toplevel
  try:
    return loading.load(config, config_flags_of(run, common))
  except Exception:  # pylint: disable=broad-except
    return None


def fingerprint(loaded) -> Optional[str]:
  """The fingerprint of a run's loaded config (None for one that did not load)."""
  from ddfp_jax.config import loading  # pylint: disable=import-outside-toplevel
  try:
    return None if loaded is None else loading.fingerprint(loaded)
  except Exception:  # pylint: disable=broad-except
    return None


def prepare_data(loaded) -> None:
  """Makes a run's datasets ready here, before runs start side by side: two runs that
  both find a dataset missing would both build it, and the second one's rename fails.
  A config that does not load or prepare is left to the run to report."""
  from ddfp_jax.data import domains  # pylint: disable=import-outside-toplevel
  if loaded is None:
    return
  try:
    domains.prepare(loaded)
  except Exception:  # pylint: disable=broad-except
    return


def finished_by_fingerprint(workdir: str) -> Dict[str, str]:
  """Fingerprint -> directory of every finished run under WORKDIR/*/ (any table's), read
  once; reused records are left out (their source is listed)."""
  found: Dict[str, str] = {}
  if not os.path.isdir(workdir):
    return found
  for table in sorted(os.listdir(workdir)):
    table_dir = os.path.join(workdir, table)
    if not os.path.isdir(table_dir):
      continue
    for name in sorted(os.listdir(table_dir)):
      path = os.path.join(table_dir, name, RESULT)
      if os.path.exists(path):
        with open(path) as f:
          record = json.load(f)
        if record.get("fingerprint") and "reused_from" not in record:
          found.setdefault(record["fingerprint"], os.path.join(table_dir, name))
  return found


def reuse(run: Run, run_dir: str, source_dir: str) -> dict:
  """This run's result.json from an identical finished run of another row or table."""
  with open(os.path.join(source_dir, RESULT)) as f:
    result = json.load(f)
  result.update(label=run.variant.label, method=run.variant.method, seed=run.seed,
                overrides=dict(run.variant.overrides), reused_from=source_dir)
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, RESULT), "w") as f:
    json.dump(result, f, indent=1)
  return result


def read_history(run_dir: str) -> List[dict]:
  """The run's evaluations in step order (a resumed run may repeat a step: last wins)."""
  path = os.path.join(run_dir, HISTORY)
  if not os.path.exists(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]


def finish(run: Run, run_dir: str, cmd: Sequence[str], wall_s: float,
           cpus: Optional[int] = None, parallel: Optional[int] = None,
           print_: Optional[str] = None) -> dict:
  """Reads a finished run's directory into its result record (and writes result.json)."""
  history = read_history(run_dir)
  if not history:
    raise HarnessError(f"{run_dir} has no {HISTORY}: the run evaluated nothing.")
  final = history[-1]
  info = {}
  if os.path.exists(os.path.join(run_dir, RUN_INFO)):
    with open(os.path.join(run_dir, RUN_INFO)) as f:
      info = json.load(f)
  result = {"label": run.variant.label, "method": run.variant.method, "seed": run.seed,
            "overrides": dict(run.variant.overrides), "step": final["step"],
            "wall_s": round(wall_s, 1), "command": " ".join(cmd[1:]), "argv": list(cmd[1:]),
            "devices": info.get("devices"), "hardware": host_description(),
            "cpus": cpus, "parallel": parallel, "fingerprint": print_,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), "history": history}
  for model in MODELS:
    if f"{model}/miou" in final:
      result[f"{model}_miou"] = final[f"{model}/miou"]
      result[f"{model}_per_class_iou"] = final.get(f"{model}/per_class_iou", [])
    # A multi-domain run (USSS) scores each domain: "student/<domain>/miou".
    domains = {k.split("/")[1]: v for k, v in final.items()
               if k.startswith(f"{model}/") and k.count("/") == 2 and k.endswith("/miou")}
    if domains:
      result[f"{model}_domain_miou"] = domains
  with open(os.path.join(run_dir, RESULT), "w") as f:
    json.dump(result, f, indent=1)
  return result


def _cpu_sets(parallel: int) -> List[List[int]]:
  cpus = sorted(os.sched_getaffinity(0))
  share = max(1, len(cpus) // parallel)
  return [cpus[i * share:(i + 1) * share] or cpus for i in range(parallel)]


def _device_env(slot: int, devices_per_run: int) -> Dict[str, str]:
  if devices_per_run <= 0:
    return {}
  ids = ",".join(str(slot * devices_per_run + i) for i in range(devices_per_run))
  return {"CUDA_VISIBLE_DEVICES": ids}


def run_all(runs: Sequence[Run], config: str, root: str, common: Sequence[str],
            parallel: int, devices_per_run: int = 0, log=print,
            on_finish: Optional[Callable[[], None]] = None,
            config_per_method: bool = False) -> List[dict]:
  """Runs every unfinished run, `parallel` at a time; returns every finished result.

  `config_per_method`: each run loads CONFIG:METHOD (a config file that takes the method
  after the colon and sets that method's own recipe, as configs/demo.py does for dgcl).

  `on_finish` is called after each run that finished (the harness rewrites its report
  there, so a sweep that is stopped half-way leaves the table of what it finished)."""
  todo = [r for r in runs if not os.path.exists(os.path.join(root, r.name, RESULT))]
  # A run whose whole config equals a finished run's (another row, or another table in the
  # same WORKDIR, e.g. the eps sweep's default value and Table 4's row) is not run again.
  config_of = lambda r: f"{config}:{r.variant.method}" if config_per_method else config
  loaded = {r: load_run_config(config_of(r), r, common) for r in todo}
  prints = {r: fingerprint(loaded[r]) for r in todo}
  finished = finished_by_fingerprint(os.path.dirname(os.path.normpath(root)))
  for run in list(todo):
    source = finished.get(prints[run])
    if source:
      reuse(run, os.path.join(root, run.name), source)
      todo.remove(run)
      log(f"{run.name}: the same config as {source}, which finished; its result is reused.")
  log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to run.")
  if parallel > 1:
    for run in todo:
      prepare_data(loaded[run])
  cpu_sets = _cpu_sets(parallel)
  free = list(range(parallel))
  active = {}   # slot -> (run, process, start, command, log file, CPUs)
  failed = []
  sources = {r: sources_of(r, runs, root, common) for r in todo}
  while todo or active:
    while todo and free:
      # A run that starts from another run of the sweep waits for it; if that one failed,
      # it does not run at all (it would start from a half-trained source).
      running = {entry[0] for entry in active.values()}
      blocked = [r for r in todo if any(s in failed for s in sources[r])]
      for run in blocked:
        todo.remove(run)
        failed.append(run)
        log(f"SKIPPED {run.name}: it starts from "
            f"{', '.join(s.name for s in sources[run] if s in failed)}, which failed")
      ready = [r for r in todo if not any(s in todo or s in running for s in sources[r])]
      if not ready and not running:
        raise HarnessError(f"the runs {', '.join(r.name for r in todo)} each start from "
                           "another of them (their flags name each other's directories): "
                           "nothing can run first.")
      if not ready:
        break
      run = ready[0]
      todo.remove(run)
      slot = free.pop(0)
      run_dir = os.path.join(root, run.name)
      os.makedirs(run_dir, exist_ok=True)
      cmd = command(config_of(run), run_dir, run, common)
      log_file = open(os.path.join(run_dir, "main.log"), "a")
      env = dict(os.environ, **_device_env(slot, devices_per_run))
      cpus = cpu_sets[slot]
      proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                              env=env, preexec_fn=lambda c=cpus: os.sched_setaffinity(0, c))
      active[slot] = (run, proc, time.time(), cmd, log_file, cpus)
      log(f"started {run.name} on CPUs {cpus}")
    time.sleep(1.0)
    for slot in list(active):
      run, proc, start, cmd, log_file, cpus = active[slot]
      if proc.poll() is None:
        continue
      log_file.close()
      del active[slot]
      free.append(slot)
      run_dir = os.path.join(root, run.name)
      wall = _add_wall(run_dir, time.time() - start)
      if proc.returncode != 0:
        failed.append(run)
        log(f"FAILED {run.name} (exit {proc.returncode}); log: {run_dir}/main.log")
        continue
      result = finish(run, run_dir, cmd, wall, len(cpus), parallel, prints[run])
      log(f"finished {run.name}: " + ", ".join(
          f"{m} {100 * result[f'{m}_miou']:.2f}" for m in MODELS if f"{m}_miou" in result))
      if on_finish is not None:
        on_finish()
  if failed:
    raise HarnessError(f"{len(failed)} run(s) failed: {', '.join(r.name for r in failed)}; "
                       "their logs are main.log in their directories. The same command "
                       "reruns them (finished runs are kept).")
  return collect(runs, root)


def _add_wall(run_dir: str, seconds: float) -> float:
  """Wall time over every attempt of a run (a resumed run adds to its earlier time)."""
  path = os.path.join(run_dir, "wall_s.txt")
  total = seconds
  if os.path.exists(path):
    with open(path) as f:
      total += float(f.read().strip() or 0)
  with open(path, "w") as f:
    f.write(f"{total:.1f}\n")
  return total


def collect(runs: Sequence[Run], root: str) -> List[dict]:
  results = []
  for run in runs:
    path = os.path.join(root, run.name, RESULT)
    if os.path.exists(path):
      with open(path) as f:
        results.append(json.load(f))
  return results


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(results: Sequence[dict], order: Sequence[str]) -> List[dict]:
  """Per variant (in `order`): seeds, mean ± std of the final mIoU of teacher and student,
  the per-class IoU averaged over seeds, and the wall time."""
  rows = []
  for label in order:
    group = [r for r in results if r["label"] == label]
    if not group:
      continue
    row = {"label": label, "method": group[0]["method"],
           "seeds": sorted(r["seed"] for r in group), "step": group[0]["step"],
           "wall_s": mean_std([r["wall_s"] for r in group])[0]}
    for model in MODELS:
      values = [r[f"{model}_miou"] for r in group if f"{model}_miou" in r]
      if len(values) == len(group):
        row[f"{model}_miou_mean"], row[f"{model}_miou_std"] = mean_std(values)
        row[f"{model}_miou_by_seed"] = {str(r["seed"]): r[f"{model}_miou"] for r in group}
        per_class = [r[f"{model}_per_class_iou"] for r in group]
        row[f"{model}_per_class_iou_mean"] = [_mean_of_seen(c) for c in zip(*per_class)]
      per_domain = [r.get(f"{model}_domain_miou", {}) for r in group]
      for domain in sorted(set().union(*per_domain)):
        if all(domain in d for d in per_domain):
          row.setdefault(f"{model}_domain_miou", {})[domain] = mean_std(
              [d[domain] for d in per_domain])
    rows.append(row)
  return rows


def _mean_of_seen(values: Sequence[Optional[float]]) -> Optional[float]:
  """Mean over the seeds in which a class occurred (its IoU is None where it did not)."""
  seen = [v for v in values if v is not None]
  return sum(seen) / len(seen) if seen else None


def _pct(mean: float, std: float) -> str:
  return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(name: str, rows: Sequence[dict], meta: dict) -> str:
  lines = [f"# {name}", "",
           f"`{meta['command']}`", "",
           f"Config {meta['config']}; seeds {meta['seeds']}; {meta['hardware']}; "
           f"{meta['date']}; {meta['layout']}. mIoU in % on the validation set after the last "
           "step (mean ± sample std over seeds); wall time per run includes start-up and "
           "compilation.", ""]
  if meta.get("finished", 0) < meta.get("planned", 0):
    lines += [f"**Partial: {meta['finished']} of {meta['planned']} runs finished**; the same "
              "command runs the rest.", ""]
  lines += ["| variant | method | seeds | teacher mIoU | student mIoU | steps | wall time per run |",
            "|---|---|---|---|---|---|---|"]
  for r in rows:
    cells = [_pct(r[f"{m}_miou_mean"], r[f"{m}_miou_std"]) if f"{m}_miou_mean" in r else "-"
             for m in MODELS]
    lines.append(f"| {r['label']} | {r['method']} | {len(r['seeds'])} | {cells[0]} | "
                 f"{cells[1]} | {r['step']} | {r['wall_s'] / 60:.1f} min |")
  domains = sorted({d for r in rows for d in r.get("student_domain_miou", {})})
  if domains:
    lines += ["", "Per domain (student mIoU %, each domain's validation set through its own "
              "head; a row trained on one domain has that column only):", "",
              "| variant | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for r in rows:
      cells = [_pct(*r["student_domain_miou"][d]) if d in r.get("student_domain_miou", {})
               else "-" for d in domains]
      lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
  lines += _per_seed_lines(rows, meta.get("paired_with"))
  if not _num_classes(rows):   # multi-domain runs: no single label space to list
    return "\n".join(lines) + "\n"
  lines += ["", "Per-class IoU (%, teacher, mean over seeds):", "",
            "| variant | " + " | ".join(str(i) for i in range(_num_classes(rows))) + " |",
            "|---|" + "---|" * _num_classes(rows)]
  for r in rows:
    per_class = r.get("teacher_per_class_iou_mean", [])
    lines.append(f"| {r['label']} | " + " | ".join(
        "-" if c is None or (isinstance(c, float) and math.isnan(c)) else f"{100 * c:.1f}"
        for c in per_class) + " |")
  return "\n".join(lines) + "\n"


def _per_seed_lines(rows: Sequence[dict], paired_with: Optional[str]) -> List[str]:
  """Each row's mIoU per seed (teacher where every row has one, else student) and, with
  `paired_with`, its difference to that row seed by seed: runs of one seed share the
  labeled split, the initialisation and the data order up to where the methods differ,
  so the paired difference is free of the seed-to-seed spread that the std shows."""
  model = "teacher" if all("teacher_miou_by_seed" in r for r in rows) else "student"
  key = f"{model}_miou_by_seed"
  seeds = sorted({int(s) for r in rows for s in r.get(key, {})})
  if len(seeds) < 2:
    return []
  base = next((r for r in rows if r["label"] == paired_with), None)
  head = "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |"
  rule = "|---|" + "---|" * len(seeds)
  if base is not None:
    head += f" Δ vs {paired_with} (mean ± std) | seeds ahead |"
    rule += "---|---|"
  lines = ["", f"Per seed ({model} mIoU %"
           + (f"; Δ: the row minus {paired_with}, seed by seed, for rows scored on the same "
              f"domains" if base is not None else "") + "):", "", head, rule]
  for r in rows:
    values = r.get(key, {})
    cells = [f"{100 * values[str(s)]:.2f}" if str(s) in values else "-" for s in seeds]
    if base is not None:
      common = [s for s in seeds if str(s) in values and str(s) in base.get(key, {})]
      deltas = [values[str(s)] - base[key][str(s)] for s in common]
      # A row scored on other domains (a one-domain baseline of a multi-domain table) is
      # another mean: no difference is shown.
      other_domains = set(r.get("student_domain_miou", {})) != set(
          base.get("student_domain_miou", {}))
      if r is base or not deltas or other_domains:
        cells += ["-", "-"]
      else:
        cells += [_pct(*mean_std(deltas)) if len(deltas) > 1 else f"{100 * deltas[0]:.2f}",
                  f"{sum(d > 0 for d in deltas)} of {len(deltas)}"]
    lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
  return lines


def _num_classes(rows) -> int:
  return max((len(r.get("teacher_per_class_iou_mean", [])) for r in rows), default=0)


def plot(name: str, rows: Sequence[dict], results: Sequence[dict], out: str) -> List[str]:
  """NAME_miou.png (bars with error bars) and NAME_curves.png; returns their paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  paths = []
  fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
  width = 0.38
  for k, model in enumerate(MODELS):
    xs = [i + (k - 0.5) * width for i in range(len(rows))]
    means = [100 * r.get(f"{model}_miou_mean", float("nan")) for r in rows]
    stds = [100 * r.get(f"{model}_miou_std", 0.0) for r in rows]
    ax.bar(xs, means, width, yerr=stds, capsize=3, label=model)
  ax.set_xticks(range(len(rows)))
  ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right")
  ax.set_ylabel("validation mIoU (%)")
  ax.set_title(f"{name}: final mIoU, mean ± std over seeds")
  ax.legend()
  fig.tight_layout()
  paths.append(os.path.join(out, f"{name}_miou.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  for r in rows:
    curves = [res["history"] for res in results if res["label"] == r["label"]]
    steps = sorted(set.intersection(*(set(h["step"] for h in c) for c in curves)))
    # The teacher's curve; the student's for a method without one (USSS).
    key = "teacher/miou" if all("teacher/miou" in h for c in curves for h in c) else "student/miou"
    means = [100 * sum(next(h[key] for h in c if h["step"] == s) for c in curves)
             / len(curves) for s in steps]
    ax.plot(steps, means, marker="o", label=r["label"])
  ax.set_xlabel("step")
  ax.set_ylabel("validation mIoU (%; teacher, else student)")
  ax.set_title(f"{name}: validation mIoU over training (mean over seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(out, f"{name}_curves.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def host_description() -> str:
  """This machine: CPU model and the CPUs this process may use."""
  return f"{hostinfo.cpu_model()}, {hostinfo.usable_cpus()} CPUs"


def hardware(results: Sequence[dict]) -> str:
  """Where the runs ran, as each run recorded it when it finished."""
  hosts = sorted({r.get("hardware") or host_description() for r in results})
  devices = sorted({d for r in results for d in (r.get("devices") or [])})
  return "; ".join(hosts) + (f"; devices: {', '.join(devices)}" if devices else "")


def layout(results: Sequence[dict], meta: dict) -> str:
  """How many runs shared the machine and on how many CPUs each, as the runs recorded it
  (a sweep resumed with another --parallel lists both)."""
  pairs = sorted({(r.get("parallel") or meta["parallel"], r.get("cpus") or meta["cpus_per_run"])
                  for r in results})
  return "; ".join(f"{p} run(s) at a time, each on {c} CPU(s)" for p, c in pairs)


def dates(results: Sequence[dict]) -> str:
  """The day(s) the runs finished (today for records that predate the field)."""
  days = sorted({(r.get("finished") or datetime.date.today().isoformat())[:10]
                 for r in results})
  return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def report(name: str, runs: Sequence[Run], order: Sequence[str], root: str, out: str,
           meta: dict) -> dict:
  """Writes NAME.{json,md} and the plots from the finished runs; returns the summary."""
  results = collect(runs, root)
  if not results:
    raise HarnessError(f"no finished run under {root} yet: nothing to report.")
  rows = summarize(results, order)
  meta = dict(meta, hardware=hardware(results), date=dates(results),
              layout=layout(results, meta),
              python=platform.python_version(), finished=len(results), planned=len(runs))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump({"meta": meta, "summary": rows, "runs": results}, f, indent=1)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(markdown(name, rows, meta))
  plot(name, rows, results, out)
  return {"meta": meta, "summary": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ddfp_jax.tools.compare", description=__doc__.split("\n")[0])
  parser.add_argument("--name", required=True, help="results/NAME.{json,md,png}")
  parser.add_argument("--config", required=True, help="config file for every run")
  parser.add_argument("--methods", nargs="*", default=[], help="method names")
  parser.add_argument("--config_per_method", action="store_true",
                      help="each run loads CONFIG:METHOD (the config sets the method's "
                      "own recipe, e.g. configs/demo.py for dgcl)")
  parser.add_argument("--variant", action="append", default=[],
                      help="LABEL=METHOD[,KEY=VALUE...]: a method with overrides")
  parser.add_argument("--sweep", default=None, help="KEY=V1,V2,...: every row at each value")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", required=True, help="runs go to WORKDIR/NAME/RUN")
  parser.add_argument("--out", default=os.path.join(REPO, "results"))
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--devices_per_run", type=int, default=0,
                      help="GPUs per run (CUDA_VISIBLE_DEVICES); 0: leave as is")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--paired_with", default=None,
                      help="a row's LABEL: the report adds each row's difference to it, "
                      "seed by seed")
  parser.add_argument("overrides", nargs="*", help="--config.KEY=VALUE for every run "
                      "(after --)")
  args = parser.parse_args(argv)
  try:
    rows = variants(args.methods, args.variant, args.sweep)
    if not rows:
      raise HarnessError("nothing to compare: name --methods and/or --variant.")
    if args.paired_with and args.paired_with not in [v.label for v in rows]:
      raise HarnessError(f"--paired_with {args.paired_with!r} is no row of this table (its "
                         f"rows: {', '.join(v.label for v in rows)}).")
    runs = [Run(v, s) for s in args.seeds for v in rows]
    root = os.path.join(args.workdir, args.name)
    meta = {"config": args.config, "seeds": args.seeds, "sweep": args.sweep,
            "parallel": args.parallel, "cpus_per_run": len(_cpu_sets(args.parallel)[0]),
            "paired_with": args.paired_with,
            "variants": [dataclasses.asdict(v) for v in rows], "overrides": args.overrides,
            "command": "python -m ddfp_jax.tools.compare " + " ".join(
                a for a in (argv if argv is not None else sys.argv[1:]))}
    write = lambda: report(args.name, runs, [v.label for v in rows], root, args.out, meta)
    if not args.report_only:
      run_all(runs, args.config, root, args.overrides, args.parallel, args.devices_per_run,
              on_finish=write, config_per_method=args.config_per_method)
    summary = write()
  except HarnessError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for row in summary["summary"]:
    # Runs without a teacher (USSS) have no teacher figures.
    scores = [f"{m} {_pct(row[f'{m}_miou_mean'], row[f'{m}_miou_std'])}"
              for m in MODELS if f"{m}_miou_mean" in row]
    print(f"{row['label']}: {', '.join(scores)} ({len(row['seeds'])} seeds)")
  print(f"results: {os.path.join(args.out, args.name)}.{{json,md}}, "
        f"{args.name}_miou.png, {args.name}_curves.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
