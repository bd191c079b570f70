"""The comparison harness: sweeps, resume, aggregation and its files."""
import json
import math
import os
import sys

import numpy as np
import pytest

from ddfp_jax.tools import compare


def test_variants_of_methods_extra_rows_and_a_sweep():
  rows = compare.variants(["ddfp"], ["upper=supervised,data.all_labeled=True"],
                          "ddfp.eps=1,4")
  assert [r.label for r in rows] == ["ddfp@ddfp.eps=1", "ddfp@ddfp.eps=4",
                                     "upper@ddfp.eps=1", "upper@ddfp.eps=4"]
  assert rows[2] == compare.Variant("upper@ddfp.eps=1", "supervised",
                                    (("data.all_labeled", "True"), ("ddfp.eps", "1")))
  tuples = compare.parse_variant("v=supervised,data.scale_range=(0.75,1.25),data.flip_prob=0")
  assert tuples.overrides == (("data.scale_range", "(0.75,1.25)"), ("data.flip_prob", "0"))
  assert compare.parse_sweep("data.scale_range=(0.5,2.0),(1,1)")[1] == ["(0.5,2.0)", "(1,1)"]
  with pytest.raises(compare.HarnessError, match="LABEL=METHOD"):
    compare.parse_variant("supervised")
  # {seed} in a value is the run's seed: a row that starts from another row's run.
  tuned = compare.parse_variant("ft=usss,usss.init_from=/runs/t/day_s{seed},seed_free=1")
  assert compare.config_flags_of(compare.Run(tuned, 2), ["--config.x=1"]) == [
      "--config.method=usss", "--config.seed=2", "--config.x=1",
      "--config.usss.init_from=/runs/t/day_s2", "--config.seed_free=1"]
  with pytest.raises(compare.HarnessError, match="KEY=V1,V2"):
    compare.parse_sweep("ddfp.eps")


def _result(label, seed, teacher, student, per_class):
  return {"label": label, "method": label, "seed": seed, "step": 10, "wall_s": 60.0 + seed,
          "teacher_miou": teacher, "student_miou": student,
          "teacher_per_class_iou": per_class, "student_per_class_iou": per_class,
          "history": [{"step": 5, "teacher/miou": teacher / 2},
                      {"step": 10, "teacher/miou": teacher}]}


def test_summary_is_the_mean_and_sample_std_over_seeds():
  teacher = [0.30, 0.36, 0.33]
  results = [_result("a", s, t, t + 0.01, [t, 1 - t]) for s, t in enumerate(teacher)]
  results.append(_result("b", 0, 0.5, 0.4, [0.5, 0.5]))
  rows = compare.summarize(results, ["b", "a", "missing"])
  assert [r["label"] for r in rows] == ["b", "a"]   # the given order; absent rows left out
  a = rows[1]
  assert a["seeds"] == [0, 1, 2]
  assert a["teacher_miou_mean"] == pytest.approx(np.mean(teacher))
  assert a["teacher_miou_std"] == pytest.approx(np.std(teacher, ddof=1))
  assert a["student_miou_mean"] == pytest.approx(np.mean(teacher) + 0.01)
  np.testing.assert_allclose(a["teacher_per_class_iou_mean"],
                             [np.mean(teacher), 1 - np.mean(teacher)])
  assert a["wall_s"] == pytest.approx(61.0)
  assert rows[0]["teacher_miou_std"] == 0.0   # one seed: no spread
  assert compare.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))


def test_per_seed_table_and_the_paired_difference():
  """Rows far apart in the seed-to-seed spread but ahead on every seed: the paired
  column says so (differences 0.02, 0.04, 0.03 -> 3.00 ± 1.00 %, 3 of 3)."""
  base = [0.30, 0.46, 0.38]
  other = [0.32, 0.50, 0.41]
  results = [_result("base", s, t, t, [t, t]) for s, t in enumerate(base)]
  results += [_result("other", s, t, t, [t, t]) for s, t in enumerate(other)]
  results.append(_result("one", 1, 0.40, 0.40, [0.4, 0.4]))       # seed 1 only: 0.40 - 0.46
  rows = compare.summarize(results, ["base", "other", "one"])
  meta = {"command": "c", "config": "c", "seeds": [0, 1, 2], "hardware": "h", "date": "d",
          "layout": "l", "paired_with": "base"}
  text = compare.markdown("t", rows, meta)
  assert "| variant | seed 0 | seed 1 | seed 2 | Δ vs base (mean ± std) | seeds ahead |" in text
  assert "| other | 32.00 | 50.00 | 41.00 | 3.00 ± 1.00 | 3 of 3 |" in text
  assert "| base | 30.00 | 46.00 | 38.00 | - | - |" in text
  assert "| one | - | 40.00 | - | -6.00 | 0 of 1 |" in text
  plain = compare.markdown("t", rows, dict(meta, paired_with=None))
  assert "| other | 32.00 | 50.00 | 41.00 |" in plain and "Δ vs" not in plain


# A stand-in for main.py: writes what the trainer writes (eval_history.jsonl) with a
# mIoU made from the method and seed, so the aggregation can be checked; it fails once
# for the run named in FAIL_ONCE, as a run killed halfway would.
FAKE_MAIN = r'''
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--config."))
workdir = sys.argv[sys.argv.index("--workdir") + 1]
marker = os.path.join(workdir, "attempts")
attempts = int(open(marker).read()) + 1 if os.path.exists(marker) else 1
open(marker, "w").write(str(attempts))
if os.environ.get("FAIL_ONCE") == os.path.basename(workdir) and attempts == 1:
  sys.exit(3)
miou = {"supervised": 0.2, "ddfp": 0.3}[args["--config.method"]] + 0.01 * int(args["--config.seed"])
with open(os.path.join(workdir, "eval_history.jsonl"), "a") as f:
  for step in (1, 2):
    f.write(json.dumps({"step": step, "teacher/miou": miou * step / 2, "student/miou": miou,
                        "teacher/per_class_iou": [miou, None],
                        "student/per_class_iou": [miou, None]}) + "\n")
json.dump({"devices": ["cpu"]}, open(os.path.join(workdir, "run_info.json"), "w"))
'''


def test_sweep_resumes_and_writes_the_table_and_plots(tmp_path, monkeypatch):
  fake = tmp_path / "fake_main.py"
  fake.write_text(FAKE_MAIN)
  monkeypatch.setattr(compare, "command", lambda config, run_dir, run, common: [
      sys.executable, str(fake), "--workdir", run_dir, f"--config.method={run.variant.method}",
      f"--config.seed={run.seed}"])
  monkeypatch.setenv("FAIL_ONCE", "ddfp_s1")
  argv = ["--name", "toy", "--config", "configs/demo.py", "--methods", "supervised", "ddfp",
          "--seeds", "0", "1", "--workdir", str(tmp_path / "runs"), "--out",
          str(tmp_path / "results"), "--parallel", "2"]
  # First pass: ddfp_s1 fails; the others finish and are kept.
  assert compare.main(argv) == 2
  root = tmp_path / "runs" / "toy"
  assert sorted(p.name for p in root.iterdir() if (p / "result.json").exists()) == [
      "ddfp_s0", "supervised_s0", "supervised_s1"]
  # ... and the report of those three was written as each finished.
  partial = (tmp_path / "results" / "toy.md").read_text()
  assert "**Partial: 3 of 4 runs finished**" in partial
  assert "| ddfp | ddfp | 1 |" in partial
  # Second pass: only the failed run runs again.
  assert compare.main(argv) == 0
  attempts = {p.name: int((p / "attempts").read_text()) for p in root.iterdir()}
  assert attempts == {"supervised_s0": 1, "supervised_s1": 1, "ddfp_s0": 1, "ddfp_s1": 2}
  summary = json.loads((tmp_path / "results" / "toy.json").read_text())
  rows = {r["label"]: r for r in summary["summary"]}
  assert rows["ddfp"]["teacher_miou_mean"] == pytest.approx(0.305)
  assert rows["ddfp"]["teacher_miou_std"] == pytest.approx(np.std([0.30, 0.31], ddof=1))
  assert rows["supervised"]["student_miou_mean"] == pytest.approx(0.205)
  assert summary["meta"]["finished"] == summary["meta"]["planned"] == 4
  assert "devices: cpu" in summary["meta"]["hardware"]
  assert all(run["finished"][:4].isdigit() and run["hardware"] for run in summary["runs"])
  assert "Partial" not in (tmp_path / "results" / "toy.md").read_text()
  table = (tmp_path / "results" / "toy.md").read_text()
  assert "| ddfp | ddfp | 2 | 30.50 ± 0.71 |" in table
  for png in ("toy_miou.png", "toy_curves.png"):
    data = (tmp_path / "results" / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

  # Another table in the same workdir: a row whose whole config equals a finished run's
  # (here "again" = supervised, and ddfp at the config's own eps) reuses its result; a row
  # that differs (eps 3) runs.
  argv2 = ["--name", "toy2", "--config", "configs/demo.py", "--methods", "ddfp",
           "--variant", "again=supervised", "--variant", "eps3=ddfp,ddfp.eps=3",
           "--variant", "eps_default=ddfp,ddfp.eps=2.0", "--seeds", "0",
           "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
  assert compare.main(argv2) == 0
  root2 = tmp_path / "runs" / "toy2"
  ran = sorted(p.name for p in root2.iterdir() if (p / "attempts").exists())
  assert ran == ["eps3_s0"]
  again = json.loads((root2 / "again_s0" / "result.json").read_text())
  assert again["reused_from"] == str(root / "supervised_s0") and again["label"] == "again"
  assert again["teacher_miou"] == pytest.approx(0.20)
  default = json.loads((root2 / "eps_default_s0" / "result.json").read_text())
  assert default["reused_from"] == str(root / "ddfp_s0")


def test_a_multi_domain_run_gets_a_column_per_domain(tmp_path):
  # What the trainer writes for a USSS run: no teacher, each domain scored, their mean.
  results = []
  for label, seeds in (("usss", (0.40, 0.44)), ("day", (0.30, 0.34))):
    for seed, day in enumerate(seeds):
      run_dir = tmp_path / f"{label}{seed}"
      run_dir.mkdir()
      final = {"step": 4, "student/day/miou": day, "student/day/per_class_iou": [day, day]}
      if label == "usss":
        final.update({"student/night/miou": day + 0.2, "student/miou": day + 0.1})
      else:
        final["student/miou"] = day
      (run_dir / compare.HISTORY).write_text(
          json.dumps(dict(final, step=2)) + "\n" + json.dumps(final) + "\n")
      run = compare.Run(compare.Variant(label, "usss"), seed)
      results.append(compare.finish(run, str(run_dir), ["python", "main.py"], 1.0))
  assert results[0]["student_domain_miou"] == {"day": 0.40, "night": pytest.approx(0.60)}
  rows = compare.summarize(results, ["usss", "day"])
  assert rows[0]["student_domain_miou"]["night"] == pytest.approx(
      (0.62, np.std([0.6, 0.64], ddof=1)))
  assert "night" not in rows[1]["student_domain_miou"]
  meta = {"command": "c", "config": "c", "seeds": [0, 1], "hardware": "h", "date": "d",
          "layout": "l"}
  text = compare.markdown("t", rows, meta)
  assert "| variant | day | night |" in text
  assert "| usss | 42.00 ± 2.83 | 62.00 ± 2.83 |" in text and "| day | 32.00 ± 2.83 | - |" in text
  assert "Per-class IoU" not in text      # no single label space to list the classes of
  # Paired with usss, the one-domain row is another mean: no difference.
  paired = compare.markdown("t", rows, dict(meta, paired_with="usss"))
  assert "| day | 30.00 | 34.00 | - | - |" in paired
  paths = compare.plot("t", rows, results, str(tmp_path))   # student curves: no teacher
  assert all(os.path.exists(p) for p in paths)


def test_paired_with_must_name_a_row(tmp_path, capsys):
  assert compare.main(["--name", "t", "--config", "configs/demo.py", "--methods", "ddfp",
                       "--workdir", str(tmp_path), "--paired_with", "ddpf",
                       "--report_only"]) == 2
  assert "--paired_with 'ddpf' is no row of this table (its rows: ddfp)" in capsys.readouterr().err


# A stand-in for main.py for rows that start from another run: it fails unless the run
# named by --config.usss.init_from has finished (the harness writes result.json then).
FAKE_FINETUNE = r'''
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--config."))
workdir = sys.argv[sys.argv.index("--workdir") + 1]
source = args.get("--config.usss.init_from")
if source and not os.path.exists(os.path.join(source, "result.json")):
  sys.exit(5)
if os.environ.get("FAIL") == os.path.basename(workdir):
  sys.exit(3)
with open(os.path.join(workdir, "eval_history.jsonl"), "a") as f:
  f.write(json.dumps({"step": 1, "student/miou": 0.5, "student/per_class_iou": [0.5]}) + "\n")
json.dump({"devices": ["cpu"]}, open(os.path.join(workdir, "run_info.json"), "w"))
'''


def test_a_row_that_starts_from_another_waits_for_it(tmp_path, monkeypatch, capsys):
  """ft (listed first) starts from src's run of the same seed: with two runs at a time
  it still waits for src to finish; when src fails, ft does not run."""
  fake = tmp_path / "fake_main.py"
  fake.write_text(FAKE_FINETUNE)
  monkeypatch.setattr(compare, "command", lambda config, run_dir, run, common: [
      sys.executable, str(fake), "--workdir", run_dir, *compare.config_flags_of(run, common)])
  monkeypatch.setattr(compare, "load_run_config", lambda *a: None)   # no real config
  root = tmp_path / "runs" / "t"
  argv = ["--name", "t", "--config", "configs/demo.py", "--variant",
          f"ft=supervised,usss.init_from={root}/src_s{{seed}}", "--variant", "src=supervised",
          "--seeds", "0", "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "r"),
          "--parallel", "2"]
  monkeypatch.setenv("FAIL", "src_s0")
  assert compare.main(argv) == 2
  assert "SKIPPED ft_s0: it starts from src_s0, which failed" in capsys.readouterr().out
  assert not (root / "ft_s0").exists()
  monkeypatch.delenv("FAIL")
  assert compare.main(argv) == 0
  logs = capsys.readouterr().out.splitlines()
  assert (root / "src_s0" / "result.json").exists() and (root / "ft_s0" / "result.json").exists()
  started = [line for line in logs if line.startswith("started")]
  assert started[-2:][0].startswith("started src_s0") and started[-1].startswith("started ft_s0")
  assert compare.sources_of(compare.Run(compare.parse_variant("x=supervised"), 0),
                            [], str(root), []) == []
