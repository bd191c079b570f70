r"""Runs the demo comparison of README's "Demo results" and writes its results files.

  python -m ddfp_jax.tools.demo_table --workdir /tmp/ddfp_demo_table --seeds 0 1

For each seed it runs, as separate processes with the user's command line,

  python main.py --config configs/demo.py --workdir WORKDIR/METHOD_sSEED --config.seed=SEED ...

for three methods on the same config: supervised only on the labeled subset; image-level
consistency only (teacher pseudo labels on the strong view, no feature perturbation);
DDFP. It records each run's final teacher and student mIoU and wall time (compilation
included) and writes results/demo_table.json and results/demo_table.md.

Then (or alone, with --analyze_only on an existing WORKDIR) it measures each final
teacher's pseudo labels against validation ground truth with
`python -m ddfp_jax.tools.pseudo_label_report` and writes results/demo_pseudo_labels.{json,md}.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

from ddfp_jax.runtime import hostinfo

METHODS = {
    "supervised only": ["--config.method=supervised"],
    "image-level consistency": ["--config.method=fixmatch"],
    "DDFP": [],
}
_FINAL = re.compile(r"Final \(step (\d+)\): teacher mIoU ([\d.]+), student mIoU ([\d.]+)")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




def run(workdir: str, seed: int, method: str, extra) -> dict:
  out_dir = os.path.join(workdir, f"{method.replace(' ', '_')}_s{seed}")
  command = [sys.executable, "main.py", "--config", "configs/demo.py", "--workdir", out_dir,
             f"--config.seed={seed}", *METHODS[method], *extra]
  start = time.time()
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  wall = time.time() - start
  with open(out_dir + ".log", "w") as f:
    f.write(proc.stdout + proc.stderr)
  match = _FINAL.search(proc.stdout)
  if proc.returncode != 0 or not match:
    raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}); log: "
                       f"{out_dir}.log")
  return {"method": method, "seed": seed, "steps": int(match.group(1)),
          "teacher_miou": float(match.group(2)), "student_miou": float(match.group(3)),
          "wall_s": round(wall, 1), "command": " ".join(command[1:])}


def markdown(runs, meta) -> str:
  lines = [f"Demo set, {meta['steps']} steps, seeds {meta['seeds']}; {meta['hardware']}; "
           f"{meta['date']}.", "",
           "| method | teacher mIoU (per seed) | student mIoU (per seed) | mean teacher | "
           "mean student | wall time per run |", "|---|---|---|---|---|---|"]
  for method in METHODS:
    rows = [r for r in runs if r["method"] == method]
    teacher = [r["teacher_miou"] for r in rows]
    student = [r["student_miou"] for r in rows]
    walls = [r["wall_s"] for r in rows]
    lines.append(
        f"| {method} | {' / '.join(f'{t:.2f}' for t in teacher)} | "
        f"{' / '.join(f'{s:.2f}' for s in student)} | {sum(teacher) / len(teacher):.2f} | "
        f"{sum(student) / len(student):.2f} | "
        f"{min(walls) / 60:.1f}-{max(walls) / 60:.1f} min |")
  return "\n".join(lines) + "\n"


def pseudo_labels(workdir: str, runs) -> list:
  """Runs the pseudo-label report on every run's final checkpoint."""
  rows = []
  for r in runs:
    out_dir = os.path.join(workdir, f"{r['method'].replace(' ', '_')}_s{r['seed']}")
    command = [sys.executable, "-m", "ddfp_jax.tools.pseudo_label_report", "--config",
               "configs/demo.py", "--workdir", out_dir, f"--config.seed={r['seed']}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    rows.append({"method": r["method"], "seed": r["seed"], **report})
  return rows


def pseudo_label_markdown(rows) -> str:
  lines = ["| method | seed | background: coverage / accuracy | digits: coverage / accuracy |",
           "|---|---|---|---|"]
  for r in rows:
    b, d = r["background"], r["other_classes"]
    lines.append(f"| {r['method']} | {r['seed']} | {100 * b['coverage']:.1f} % / "
                 f"{100 * b['accuracy_of_confident']:.1f} % | {100 * d['coverage']:.1f} % / "
                 f"{100 * d['accuracy_of_confident']:.1f} % |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--out", default=os.path.join(REPO, "results"))
  parser.add_argument("--analyze_only", action="store_true",
                      help="skip training; analyse the runs listed in OUT/demo_table.json")
  parser.add_argument("extra", nargs="*", help="extra --config.KEY=VALUE for every run")
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  if args.analyze_only:
    with open(os.path.join(args.out, "demo_table.json")) as f:
      runs = json.load(f)["runs"]
    rows = pseudo_labels(args.workdir, runs)
    with open(os.path.join(args.out, "demo_pseudo_labels.json"), "w") as f:
      json.dump(rows, f, indent=2)
    table = pseudo_label_markdown(rows)
    with open(os.path.join(args.out, "demo_pseudo_labels.md"), "w") as f:
      f.write(table)
    print(table)
    return
  runs = []
  for seed in args.seeds:
    for method in METHODS:
      runs.append(run(args.workdir, seed, method, args.extra))
      print(json.dumps(runs[-1]), flush=True)
  meta = {"seeds": args.seeds, "steps": runs[0]["steps"],
          "hardware": f"{hostinfo.cpu_model()}, {os.cpu_count()} cores, CPU only",
          "date": datetime.date.today().isoformat(), "extra": args.extra}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "demo_table.json"), "w") as f:
    json.dump({"meta": meta, "runs": runs}, f, indent=2)
  table = markdown(runs, meta)
  with open(os.path.join(args.out, "demo_table.md"), "w") as f:
    f.write(table)
  print(table)
  rows = pseudo_labels(args.workdir, runs)
  with open(os.path.join(args.out, "demo_pseudo_labels.json"), "w") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(args.out, "demo_pseudo_labels.md"), "w") as f:
    f.write(pseudo_label_markdown(rows))


if __name__ == "__main__":
  main()
