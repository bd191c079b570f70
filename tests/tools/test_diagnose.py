"""The diagnosis tool: its counts against NumPy, the density measurements against the
first-order behaviour of the two perturbations, and its command line on a real run."""
import json
import os

import jax
import numpy as np
import pytest

from ddfp_jax.models import builders
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.tools import compare, diagnose
from ddfp_jax.training.state import create_train_state
from tests.paths import REPO
from tests.tiny import demo_cli_overrides, tiny_config


def _inputs(config, seed=0):
  rs = np.random.RandomState(seed)
  n, c, k = 3, config.data.crop_size, config.data.num_classes
  images = rs.randn(n, c, c, 3).astype(np.float32)
  labels = rs.randint(0, k, size=(n, c, c)).astype(np.int32)
  labels[:, :4] = config.data.ignore_label
  keep = labels != config.data.ignore_label
  return images, labels, keep


def test_pseudo_label_counts_are_numpys():
  config = tiny_config(method="fixmatch")
  config.semi.threshold = 0.3
  state = create_train_state(config, jax.random.key(0))
  images, labels, keep = _inputs(config)
  terms = diagnose.make_measure(config, state)(images, labels, keep, jax.random.key(1))
  model = builders.build_model(config)
  variables = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  probs = np.asarray(jax.nn.softmax(resize_bilinear(model.apply(variables, images, False),
                                                    images.shape[1:3]), axis=-1))
  conf, pred = probs.max(-1), probs.argmax(-1)
  for c in range(config.data.num_classes):
    of_c = keep & (labels == c)
    sure = of_c & (conf > 0.3)
    assert terms["pseudo_labels"]["total"][c] == of_c.sum()
    assert terms["pseudo_labels"]["confident"][c] == sure.sum()
    assert terms["pseudo_labels"]["correct"][c] == (sure & (pred == c)).sum()
  assert "density" not in terms     # fixmatch has no flow


@pytest.mark.parametrize("site", ["feature", "classifier_input"])
def test_density_descending_lowers_the_density_more_than_a_random_step(site):
  # A small eps: to first order the density-descending step lowers each pixel's log-density
  # by eps * |grad|, a random direction changes it by a zero-mean amount.
  config = tiny_config(method="ddfp")
  config.semi.site = site
  config.semi.threshold = 0.0       # every pixel confident
  config.ddfp.eps = 0.05
  state = create_train_state(config, jax.random.key(0))
  images, labels, keep = _inputs(config)
  d = jax.device_get(diagnose.make_measure(config, state)(images, labels, keep,
                                                          jax.random.key(1)))["density"]
  mean = {name: float(total / count) for name, (total, count) in d.items()}
  drop_dd = mean["clean_log_density"] - mean["density_descending_log_density"]
  drop_random = mean["clean_log_density"] - mean["random_log_density"]
  assert drop_dd > 0
  assert abs(drop_random) < 0.5 * drop_dd
  assert 0.0 <= mean["density_descending_keeps_pseudo_label"] <= 1.0
  if site == "feature":   # untrained: student = teacher, so clean features keep every label
    assert mean["clean_keeps_pseudo_label"] == pytest.approx(1.0)
  assert np.isfinite(mean["teacher_nll"]) and mean["feature_norm"] > 0
  assert all(mean[f"{v}_ce"] >= 0 for v in ("clean", "density_descending", "random"))


def test_summary_ratios():
  sums = {"pseudo_labels": {"total": np.array([10, 4, 6]), "confident": np.array([8, 2, 0]),
                            "correct": np.array([8, 1, 0])},
          "density": {"teacher_nll": (np.float32(30.0), np.float32(10.0))}}
  s = diagnose.summarize(sums, 0.9)
  assert s["background"] == {"pixels": 10, "coverage": 0.8, "accuracy_of_confident": 1.0}
  assert s["other_classes"] == {"pixels": 10, "coverage": 0.2, "accuracy_of_confident": 0.5}
  assert s["per_class"][2]["accuracy_of_confident"] == 0.0   # nothing confident: 0, not NaN
  assert s["density"]["teacher_nll"] == pytest.approx(3.0)


def test_the_recorded_command_gives_back_config_and_overrides():
  argv = ["main.py", "--config", "configs/demo.py", "--workdir", "/x", "--config.method=vat",
          "--config.seed=2", "--config.data.scale_range=(0.9,1.1)"]
  assert diagnose.config_args(argv) == ("configs/demo.py", [
      "--config.method=vat", "--config.seed=2", "--config.data.scale_range=(0.9,1.1)"])
  with pytest.raises(diagnose.DiagnoseError):
    diagnose.config_args(["main.py", "--workdir", "/x"])


def test_a_real_harness_run_is_read_back_and_diagnosed(tmp_path):
  """A 2-step DDFP run of main.py through the harness (the trainer's files are what the
  harness reads), then the tool on the harness's directory."""
  argv = ["--name", "real", "--config", os.path.join(REPO, "configs", "demo.py"),
          "--methods", "ddfp", "--seeds", "0", "--workdir", str(tmp_path / "runs"),
          "--out", str(tmp_path / "results"), "--", *demo_cli_overrides(tmp_path / "tfds")]
  assert compare.main(argv) == 0
  out = tmp_path / "results"
  (run,) = json.loads((out / "real.json").read_text())["runs"]
  assert run["method"] == "ddfp" and run["step"] == 2 and run["devices"]
  assert 0.0 <= run["teacher_miou"] <= 1.0 and len(run["teacher_per_class_iou"]) == 11
  assert [h["step"] for h in run["history"]] == [2]
  assert diagnose.main(["--name", "real", "--runs", str(tmp_path / "runs" / "real"),
                        "--out", str(out)]) == 0
  (row,) = json.loads((out / "real_diagnosis.json").read_text())["runs"]
  assert row["run"] == "ddfp_s0" and row["step"] == 2 and row["method"] == "ddfp"
  pixels = sum(c["pixels"] for c in row["diagnosis"]["per_class"])
  assert pixels == row["diagnosis"]["background"]["pixels"] + row["diagnosis"][
      "other_classes"]["pixels"] > 0
  assert set(row["diagnosis"]["density"]) >= {"teacher_nll", "random_log_density"}
  # The 2-step run logged its losses at step 2 (log_every is larger): the last 20 % of
  # the logged steps is that step.
  assert set(row["late_training_losses"]) >= {"loss", "loss_sup"}
  table = (out / "real_diagnosis.md").read_text()
  assert "| ddfp_s0 | 2 |" in table and "log p density-descending" in table and "CE: clean" in table
  # A table whose run the harness reused from the first: its checkpoints are read there.
  argv[1] = "again"
  assert compare.main(argv) == 0
  assert not (tmp_path / "runs" / "again" / "ddfp_s0" / "checkpoints").exists() or not any(
      (tmp_path / "runs" / "again" / "ddfp_s0" / "checkpoints").iterdir())
  assert diagnose.main(["--name", "again", "--runs", str(tmp_path / "runs" / "again"),
                        "--out", str(out)]) == 0
  (again,) = json.loads((out / "again_diagnosis.json").read_text())["runs"]
  assert again["diagnosis"] == row["diagnosis"]
  assert diagnose.main(["--name", "x", "--runs", str(tmp_path / "nothing")]) == 2


USSS_DATA = {"method": "usss", "usss.embedding_dim": 8, "data.num_classes": 11,
             "data.demo_image_size": 48, "data.demo_labeled": 4, "data.demo_unlabeled": 8,
             "data.demo_validation": 4, "data.eval_per_device": 2}


def test_usss_measurements_scale_with_the_embedding_as_they_must(tmp_path):
  """On a fresh usss state, the embedding head's output scaled by 4: the mean norm is 4x,
  the entropy of e / |e|, which label embedding scores highest, and the heads are
  unchanged, the entropies of e themselves move. The head's accuracy is the evaluation's
  pixel accuracy (evaluate.py's confusion matrix, another computation)."""
  from ddfp_jax.data import domains
  from ddfp_jax.tools import usss_diagnosis
  from ddfp_jax.training import trainer
  config = tiny_config(**USSS_DATA, **{"data.data_dir": str(tmp_path / "tfds")})
  domains.prepare(config)
  state = create_train_state(config, jax.random.key(0))
  base = usss_diagnosis.diagnose(config, state)
  embedding = dict(state.params["embedding"])
  scaled = state.replace(params={**state.params, "embedding": jax.tree.map(
      lambda x: 4.0 * x, embedding)})
  big = usss_diagnosis.diagnose(config, scaled)
  evaluated = trainer.evaluate_state(config, state)
  assert set(base) == {"day", "night"}
  for d in base:
    assert set(base[d]) == set(usss_diagnosis.TERMS)
    np.testing.assert_allclose(big[d]["embedding_norm"], 4 * base[d]["embedding_norm"],
                               rtol=1e-5)
    for term in ("within_unit", "embedding_accuracy", "head_accuracy",
                 "embedding_top_share"):
      np.testing.assert_allclose(big[d][term], base[d][term], rtol=1e-5, atol=1e-6)
    assert abs(big[d]["within"] - base[d]["within"]) > 1e-3
    assert big[d]["embedding_top_class"] == base[d]["embedding_top_class"]
    assert 1 / 11 <= base[d]["embedding_top_share"] <= 1.0
    assert 0.0 <= base[d]["within"] <= np.log(11 if d == "day" else 6) + 1e-6
    np.testing.assert_allclose(base[d]["head_accuracy"],
                               evaluated[f"student/{d}/pixel_accuracy"], rtol=1e-6)

  # Through the command line on a saved state: the report has the USSS table.
  from ddfp_jax.training.checkpoint import Checkpointer
  from tests.tiny import as_flags
  with Checkpointer(str(tmp_path / "run" / "checkpoints")) as ckpt:
    ckpt.save(0, state, force=True)
    ckpt.wait()
  flags = as_flags({**USSS_DATA, "data.data_dir": str(tmp_path / "tfds")})
  assert diagnose.main(["--name", "u", "--config", os.path.join(REPO, "configs", "demo.py"),
                        "--workdir", str(tmp_path / "run"), "--out", str(tmp_path), "--",
                        *flags]) == 0
  (row,) = json.loads((tmp_path / "u_diagnosis.json").read_text())["runs"]
  assert row["diagnosis"]["usss"]["night"]["embedding_norm"] == pytest.approx(
      base["night"]["embedding_norm"], rel=1e-6)
  table = (tmp_path / "u_diagnosis.md").read_text()
  assert "| run | domain | ‖e‖ |" in table and "| run | step | background" not in table
