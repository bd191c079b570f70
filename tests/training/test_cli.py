"""`main.py` as a user meets it: a run end to end, bad input and damaged files.

Every bad-input case ends with its exit status and one paragraph on stderr (a single `error: ...`
line that names the problem and the fix), no traceback, and no file of an earlier run
changed; a damaged newest checkpoint is set aside and the run resumes from the one
before. The cases that stop before training start all at once (they only pay for the
imports); the ones that read or repair the earlier run's checkpoints follow one by one.
"""
import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

from ddfp_jax.config import check
from ddfp_jax.config import defaults
from ddfp_jax.config.check import ConfigError
from tiny import DEMO_CLASSES, demo_cli_overrides, tiny_config
import paths

REPO = str(paths.REPO)


def _main(*args):
  return [sys.executable, os.path.join(REPO, "main.py"), *args]


def _env():
  return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)


def _run(command, timeout=600):
  return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _snapshot(root):
  """Every file under `root` with a hash of its bytes."""
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return files


def _errors(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _assert_one_paragraph(out, status, *phrases, case=""):
  assert out.returncode == status, f"{case}: status {out.returncode}\n{out.stderr[-3000:]}"
  assert "Traceback" not in out.stderr, f"{case}:\n{out.stderr[-3000:]}"
  errors = _errors(out.stderr)
  assert len(errors) == 1, f"{case}: {errors}\n{out.stderr[-3000:]}"
  for phrase in phrases:
    assert phrase in errors[0], f"{case}: {phrase!r} not in {errors[0]!r}"


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
  """A finished two-step fixmatch run with a checkpoint at steps 1 and 2."""
  root = tmp_path_factory.mktemp("earlier")
  flags = [*demo_cli_overrides(root / "tfds"), "--config.train.checkpoint_every=1"]
  workdir = str(root / "run")
  out = _run(_main("--config", "configs/demo.py:fixmatch", "--workdir", workdir, *flags))
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["1", "2"]
  return workdir, flags, out.stdout


def test_cli_trains_then_evaluates_end_to_end(earlier_run):
  """The method comes after the config file's name (DDFP runs through main.py in the
  multi-process tests); the run ends with a summary."""
  workdir, flags, stdout = earlier_run
  assert "Final (step 2): teacher mIoU" in stdout
  assert "(method fixmatch)" in stdout
  # The summary ends with the run's directory and where the demo's comparison lives.
  assert f"Run directory: {workdir} (eval_history.jsonl" in stdout
  assert stdout.rstrip().endswith("(docs/compare.md).")
  assert "results/demo_table4.md" in stdout
  evaluated = _run(_main("--config", "configs/demo.py:fixmatch", "--workdir", workdir,
                         *flags, "--mode", "eval"))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "Checkpoint step 2: teacher mIoU" in evaluated.stdout


def test_bad_input_stops_with_one_paragraph_and_changes_nothing(earlier_run, tmp_path):
  workdir, flags, _ = earlier_run
  a_file = tmp_path / "results.txt"
  a_file.write_text("an earlier result\n")
  train = lambda *extra, config="configs/demo.py:fixmatch": _main(
      "--config", config, "--workdir", workdir, *flags, *extra)
  # (case, command, exit status, phrases of the paragraph)
  cases = [
      ("workdir is a file", _main("--config", "configs/demo.py", "--workdir", str(a_file)),
       2, ["is an existing file, not a directory", "Pass a directory"]),
      ("workdir inside a file", _main("--config", "configs/demo.py", "--workdir",
                                      str(a_file / "run")), 2, ["is a file"]),
      ("no workdir", _main("--config", "configs/demo.py"), 2,
       ["--workdir is required", "e.g. --workdir"]),
      ("no config", _main("--workdir", workdir), 2, ["--config is required"]),
      ("config file missing", _main("--config", "configs/nope.py", "--workdir", workdir), 2,
       ["config file cannot be loaded", "Pass an existing file"]),
      ("unknown key", train("--config.ddfp.epsilon=2"), 2,
       ["no key 'ddfp.epsilon'", "the keys under 'ddfp' are eps, eval_flow, flow"]),
      ("key of an earlier version", train("--config.ddfp.perturbation=densty"), 2,
       ["no key 'ddfp.perturbation' any more; it was replaced by --config.method="]),
      ("mistyped key", train("--config.model.dept=50"), 2,
       ["no key 'model.dept' (did you mean 'depth'?)"]),
      ("unknown method", train(config="configs/demo.py:fixmach"), 1,
       ["'method' is 'fixmach'", "(did you mean 'fixmatch'?)", "--config.method=NAME"]),
      ("unknown choice", train("--config.semi.site=featur"), 1,
       ["'semi.site' is 'featur', not one of 'feature', 'classifier_input' (did you mean "
        "'feature'?)"]),
      ("unknown dtype and protocol", train("--config.model.dtype=bf16",
                                           "--config.data.eval_protocol=sliding"), 1,
       ["'model.dtype' is 'bf16', not one of 'float32', 'bfloat16'",
        "'data.eval_protocol' is 'sliding'", "(did you mean 'sliding_window'?)"]),
      ("unknown dataset", train("--config.data.name=cityscape"), 1,
       ["'data.name' is 'cityscape'", "(did you mean 'cityscapes'?)"]),
      ("out of range", train("--config.semi.threshold=1.5", "--config.data.crop_size=4",
                             "--config.data.labeled_per_device=0"), 1,
       ["'semi.threshold' must be in [0, 1], got 1.5",
        "'data.crop_size' must be at least model.output_stride (16)",
        "'data.labeled_per_device' must be positive, got 0"]),
      ("labels outside the classes", train("--config.data.num_classes=5"), 1,
       ["'data.num_classes' is 5 but the demo's 'day' domain has 11 classes"]),
      ("dataset not prepared", train("--config.data.name=cityscapes",
                                     "--config.data.num_classes=19"), 1,
       ["needs the prepared TFDS files of cityscapes", "python -m ddfp_jax.data.prepare"]),
      ("dgcl without its data", _main("--config", "configs/dgcl/pascal_732.py", "--workdir",
                                      str(tmp_path / "dgcl")), 1,
       ["needs the prepared TFDS files of pascal", "python -m ddfp_jax.data.prepare"]),
      ("dgcl without a projection head", train("--config.method=dgcl"), 1,
       ["method 'dgcl'", "set model.projection_dim > 0", "configs/demo.py:dgcl"]),
      ("css without a representation head", train("--config.method=css"), 1,
       ["method 'css'", "set model.projection_dim > 0", "configs/demo.py:css"]),
      ("css config with a mistyped variant", _main(
          "--config", "configs/css/pascal_92.py:crosss", "--workdir", str(tmp_path / "css")), 2,
       ["one of mix, cross, release, cross_release", "configs/css/pascal_92.py:cross"]),
      ("eval without checkpoint", _main("--config", "configs/demo.py", "--workdir",
                                        str(tmp_path / "empty"), "--mode", "eval"), 1,
       ["No checkpoint to evaluate", "Train first"]),
  ]
  before = _snapshot(workdir)
  started = [(case, subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True), status, phrases)
             for case, command, status, phrases in cases]
  for case, process, status, phrases in started:
    stdout, stderr = process.communicate(timeout=600)
    out = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    _assert_one_paragraph(out, status, *phrases, case=case)
  assert _snapshot(workdir) == before
  assert a_file.read_text() == "an earlier result\n"
  assert not (tmp_path / "empty").exists() or not os.listdir(tmp_path / "empty")
  assert not (tmp_path / "dgcl").exists() or not os.listdir(tmp_path / "dgcl")


def _overwrite_largest_data_file(step_dir):
  """Bytes changed in place, as a bad disk or a stray write leaves them."""
  files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names
           if f"{os.sep}d{os.sep}" in os.path.join(d, n)]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x5a" * 4096)


def test_damaged_newest_checkpoint_is_named_and_resume_uses_the_one_before(earlier_run):
  workdir, flags, first_stdout = earlier_run
  checkpoints = os.path.join(workdir, "checkpoints")
  _overwrite_largest_data_file(os.path.join(checkpoints, "latest", "2"))
  command = _main("--config", "configs/demo.py:fixmatch", "--workdir", workdir, *flags)

  before = _snapshot(workdir)
  evaluated = _run(command + ["--mode", "eval"])
  _assert_one_paragraph(evaluated, 1, "Cannot evaluate: checkpoint step 2",
                        "The other complete step(s)", ": 1;", case="eval of damaged step")
  assert _snapshot(workdir) == before

  resumed = _run(command)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Traceback" not in resumed.stderr
  assert "warning: resuming from step 1, not from the damaged step 2" in resumed.stderr
  # The damaged files are kept aside; step 2 is trained again, exactly as the first time.
  assert os.listdir(os.path.join(checkpoints, "damaged")) == ["2"]
  assert sorted(os.listdir(os.path.join(checkpoints, "latest"))) == ["1", "2"]
  final = lambda stdout: next(l for l in stdout.splitlines() if l.startswith("Final"))
  assert final(resumed.stdout) == final(first_stdout)


_ONE_BATCH = """
import importlib, sys, numpy as np
from PIL import Image
import ddfp_jax
from ddfp_jax.data import pipeline
cfg = importlib.import_module("configs.demo").get_config()
cfg.data.data_dir = sys.argv[1]
cfg.data.demo_image_size, cfg.data.demo_labeled, cfg.data.demo_unlabeled = 48, 8, 16
cfg.data.demo_validation = 6
it = pipeline.train_batches(cfg, start_step=3, local_device_count=1)
b = next(it)
grid = np.concatenate([b["labeled_image"][0, i] for i in range(4)], 0)
Image.fromarray(grid.clip(0, 255).astype(np.uint8)).save(sys.argv[2])
print("saved", flush=True)
"""


def test_a_script_that_keeps_a_pipeline_iterator_exits(tmp_path):
  """An iterator still referenced when the interpreter shuts down used to keep it from
  exiting (tf.data threads calling into Python); the exit hook closes it."""
  script = tmp_path / "one_batch.py"
  script.write_text(_ONE_BATCH)
  began = time.monotonic()
  out = _run([sys.executable, str(script), str(tmp_path / "tfds"), str(tmp_path / "b.png")],
             timeout=300)
  assert out.returncode == 0 and "saved" in out.stdout, out.stderr[-3000:]
  assert (tmp_path / "b.png").stat().st_size > 0
  print(f"one-batch script: {time.monotonic() - began:.1f} s")


# String keys whose values are free (paths, text); every other string key is a choice.
_FREE_TEXT = {"data.data_dir", "data.manual_dir", "data.split_dir", "model.pretrained",
              "train.final_note", "usss.domains", "usss.embedding_file", "usss.init_from"}


def test_every_string_key_is_free_text_or_a_checked_choice():
  """A new choice-valued key must be registered in check.choices(), or listed above."""
  flat = check._flatten(defaults.get_config())  # pylint: disable=protected-access
  strings = {k for k, v in flat.items() if isinstance(v, str)}
  assert strings - _FREE_TEXT - set(check.choices()) == set()
  for key, valid in check.choices().items():
    assert flat[key] in valid, key


@pytest.mark.parametrize("key", sorted(check.choices()))
def test_each_choice_key_names_the_valid_values(key):
  valid = check.choices()[key]
  wrong = "nonsense" if isinstance(valid[0], str) else 7
  config = tiny_config(**DEMO_CLASSES, **{key: wrong})
  shown = ", ".join(repr(v) for v in valid)
  with pytest.raises(ConfigError, match=re.escape(f"'{key}' is {wrong!r}, not one of {shown}")):
    check.check_config(config)


def test_relations_between_keys_are_checked():
  ok = tiny_config(**DEMO_CLASSES)
  check.check_config(ok)
  for overrides, message in [
      ({"data.eval_protocol": "center_crop", "data.eval_crop": 8},
       "'data.eval_crop' must be at least model.output_stride (16), got 8"),
      ({"data.eval_protocol": "sliding_window", "data.eval_window": 8},
       "'data.eval_window' must be at least model.output_stride (16), got 8"),
      ({"data.ignore_label": 3}, "'data.ignore_label' must be a label value that is no "
       "class id: from data.num_classes (11) to 255"),
      ({"data.scale_range": (2.0, 0.5)}, "'data.scale_range' must be two numbers 0 < low "
       "<= high, got (2.0, 0.5)"),
  ]:
    with pytest.raises(ConfigError, match=re.escape(message)):
      check.check_config(tiny_config(**DEMO_CLASSES, **overrides))
  # A crop only matters for the protocol that uses it.
  check.check_config(tiny_config(**DEMO_CLASSES, **{"data.eval_crop": 8}))
