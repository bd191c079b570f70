"""benchmarks/device_check.sh: its stages, its time budget and its refusal of a machine
without the dependencies, run with a stand-in for Python that records what it is asked
(the benchmark command itself is tested in test_benchmarks_model.py)."""
import os
import pathlib
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.sh"
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
if [ "$1" = "-c" ]; then exit {import_rc}; fi
exit 0
"""


def _run(tmp_path, import_rc=0, **env):
  log = tmp_path / "calls.txt"
  fake = tmp_path / "python"
  fake.write_text(FAKE_PYTHON.format(log=log, import_rc=import_rc))
  fake.chmod(0o755)
  done = subprocess.run(
      ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
      env={**os.environ, "DEVICE_CHECK_PYTHON": str(fake),
           "DEVICE_CHECK_OUT": str(tmp_path / "results"), **env})
  calls = log.read_text().splitlines() if log.exists() else []
  return done, calls


def test_the_four_stages_run_in_order_with_the_budget_and_shapes(tmp_path):
  done, calls = _run(tmp_path, DEVICE_CHECK_SHAPES="tiny", DEVICE_CHECK_SHAPES_769="tiny",
                     DEVICE_CHECK_REPEATS="2")
  assert done.returncode == 0, done.stdout + done.stderr
  assert calls[0] == "-c import ddfp_jax"
  stages = [c for c in calls if c.startswith("-m benchmarks.model")]
  assert len(stages) == 4
  common = f"--out_dir {tmp_path / 'results'} --repeats 2 --warmup 3 --shapes tiny"
  aspp = "aspp,aspp_space_to_batch,aspp_shifted,aspp_undilated"
  assert stages == [
      f"-m benchmarks.model {common} --dtypes bfloat16 --benchmarks {aspp},model_forward,model_train",
      f"-m benchmarks.model {common} --dtypes float32 --benchmarks {aspp},model_train",
      f"-m benchmarks.model {common} --dtypes bfloat16 --benchmarks train_step",
      f"-m benchmarks.model {common} --dtypes bfloat16 --benchmarks model_train"]
  # The shares (180 + 120 + 110 + 70 s) fit the default 8 minutes.
  assert "up to 180 s" in done.stdout and "up to 70 s" in done.stdout
  assert sum(int(line.split("up to ")[1].split(" s")[0])
             for line in done.stdout.splitlines() if "up to " in line) <= 480


def test_a_spent_budget_skips_the_stages_and_says_so(tmp_path):
  done, calls = _run(tmp_path, DEVICE_CHECK_BUDGET_S="15")
  assert done.returncode == 1
  assert done.stdout.count("budget spent, skipped") == 4
  assert not [c for c in calls if c.startswith("-m")]


def test_a_machine_without_the_dependencies_gets_one_paragraph(tmp_path):
  done, calls = _run(tmp_path, import_rc=1)
  assert done.returncode == 2
  assert "'import ddfp_jax' fails" in done.stderr and "distrax" in done.stderr
  assert "Traceback" not in done.stderr
  assert calls == ["-c import ddfp_jax"]
