"""Predictions: the written PNGs against the evaluation, palettes, sizes, bad input."""
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from ddfp_jax.data import palettes
from ddfp_jax.models import builders
from ddfp_jax.data import sources
from ddfp_jax.tools import figures, predict
from ddfp_jax.training import evaluate, metrics, trainer
from ddfp_jax.training.checkpoint import CheckpointError, Checkpointer
from ddfp_jax.training.state import create_train_state
from tests.paths import REPO
from tests.tiny import SMALL_DEMO_SET, as_flags, tiny_config


def _config(tmp_path, **overrides):
  return tiny_config(**SMALL_DEMO_SET, **{"data.data_dir": str(tmp_path / "tfds")},
                     **overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with one checkpoint (an untrained model: its predictions vary enough), and
  the demo's validation scenes as PNG files."""
  root = tmp_path_factory.mktemp("predict")
  config = trainer.ready_config(_config(root))
  state = create_train_state(config, jax.random.key(3))
  with Checkpointer(os.path.join(root, "run", "checkpoints")) as ckpt:
    ckpt.save(7, state)
    ckpt.save_best(7, state, 0.5)
  images, labels = sources.demo_arrays(config, "validation")
  os.makedirs(root / "scenes")
  for i, image in enumerate(images):
    Image.fromarray(image).save(root / "scenes" / f"scene{i:02d}.png")
  return root, config, state, labels


def test_written_labels_give_the_evaluated_miou(run, tmp_path):
  root, config, state, labels = run
  written = predict.run(config, str(root / "run"), [str(root / "scenes")], str(tmp_path),
                        progress=False)
  assert len(written) == len(labels)
  confusion = sum(metrics.confusion_matrix(
      np.asarray(Image.open(w["label"])), label, config.data.num_classes)
      for w, label in zip(written, labels))
  from_files = evaluate.summarize(np.asarray(confusion))["miou"]
  evaluated = trainer.evaluate_state(config, state)["teacher/miou"]
  assert from_files == pytest.approx(evaluated, abs=1e-12)
  # The palette PNG holds the same ids; the overlay is the image's size.
  first = written[0]
  np.testing.assert_array_equal(np.asarray(Image.open(first["color"])),
                                np.asarray(Image.open(first["label"])))
  assert Image.open(first["color"]).mode == "P"
  assert Image.open(first["overlay"]).size == Image.open(first["label"]).size


def test_any_size_is_padded_to_a_bucket_and_cut_back(run, tmp_path):
  root, config, _, _ = run
  rs = np.random.RandomState(0)
  for name, shape in (("small", (37, 50)), ("wide", (40, 90))):
    Image.fromarray(rs.randint(0, 255, shape + (3,), np.uint8)).save(tmp_path / f"{name}.png")
  written = predict.run(config, str(root / "run"), [str(tmp_path / "*.png")],
                        str(tmp_path / "out"), checkpoint="best", model="student",
                        bucket=32, progress=False)
  sizes = [np.asarray(Image.open(w["label"])).shape for w in written]
  assert sizes == [(37, 50), (40, 90)]


def test_sliding_window_prediction_is_the_evaluations(run):
  """An image larger than the window: feeding the predicted map to the evaluation as the
  label gives a diagonal confusion matrix over every pixel, i.e. the same prediction."""
  root, config, _, _ = run
  config = config.copy_and_resolve_references()
  # Shifted windows all have the full size: one shape to compile.
  config.data.eval_protocol, config.data.eval_window = "sliding_window", 32
  config.data.eval_window_grid = "shifted"
  variables, _, _ = predict.load_variables(config, str(root / "run"))
  image = np.random.RandomState(1).randint(0, 255, (40, 56, 3), np.uint8)
  classes = predict.Predictor(config, variables).predict([image])[0]
  assert classes.shape == (40, 56)
  step = evaluate.eval_step_from_config(config, builders.build_model(config),
                                        axis_name=None)
  x = (image - np.asarray(config.data.mean)) / np.asarray(config.data.std)
  confusion = np.asarray(step(variables, None, {"image": x[None].astype(np.float32),
                                               "label": classes[None]})["confusion"])
  assert confusion.sum() == 40 * 56 and np.trace(confusion) == confusion.sum()


def test_palettes_known_colours():
  voc = palettes.voc()
  # The VOC devkit's colours: aeroplane, bicycle, person, the boundary (ignore).
  assert voc[1].tolist() == [128, 0, 0] and voc[2].tolist() == [0, 128, 0]
  assert voc[15].tolist() == [192, 128, 128] and voc[255].tolist() == [224, 224, 192]
  assert palettes.cityscapes()[0].tolist() == [128, 64, 128]     # road
  digits = palettes.digits()
  assert len({tuple(c) for c in digits[:11]}) == 11


def test_bad_input_is_one_paragraph(run, tmp_path):
  root, config, _, _ = run
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.raises(predict.PredictError, match="broken.png cannot be read as an image"):
    predict.run(config, str(root / "run"), [str(tmp_path / "broken.png")], str(tmp_path))
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "grey.png")
  with pytest.raises(predict.PredictError, match=r"grey.png is a 'L' image with 1 "
                     r"channel\(s\); the model reads 3-channel RGB"):
    predict.run(config, str(root / "run"), [str(tmp_path / "grey.png")], str(tmp_path))
  with pytest.raises(predict.PredictError, match="no image found for '.*nothing'"):
    predict.run(config, str(root / "run"), [str(tmp_path / "nothing")], str(tmp_path))
  with pytest.raises(predict.PredictError, match="no checkpoint step 9 .*latest steps \\[7\\]"):
    predict.run(config, str(root / "run"), [str(root / "scenes")], str(tmp_path),
                checkpoint="9")
  other = config.copy_and_resolve_references()
  other.model.width = 1 / 8
  with pytest.raises(CheckpointError, match="step 7 .* cannot be read"):
    predict.run(other, str(root / "run"), [str(root / "scenes")], str(tmp_path))


def test_cli_writes_the_pngs(run, tmp_path):
  root, _, _, _ = run
  command = [sys.executable, "-m", "ddfp_jax.tools.predict", "--config", "configs/demo.py",
             "--workdir", str(root / "run"), "--images", str(root / "scenes" / "scene0*.png"),
             "--out", str(tmp_path), *as_flags({**SMALL_DEMO_SET,
                                                "data.data_dir": root / "tfds"})]
  out = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Wrote 18 PNGs for 6 image(s)" in out.stdout
  assert len(os.listdir(tmp_path)) == 18


def test_qualitative_figure_shows_image_truth_and_each_runs_prediction(run, tmp_path):
  root, config, _, labels = run
  out = str(tmp_path / "q.png")
  figure = figures.qualitative(config, [("a", str(root / "run")), ("b", str(root / "run"))],
                               num=3, out=out, scale=2)
  side, header, gap = 48 * 2, 14, 2
  assert figure.shape == (header + 3 * (side + gap) - gap, 4 * (side + gap) - gap, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(out)), figure)
  up = lambda a: np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
  images, _ = sources.demo_arrays(trainer.ready_config(config), "validation")
  colours = palettes.palette("demo")
  variables, _, _ = predict.load_variables(config, str(root / "run"))
  predicted = predict.Predictor(config, variables).predict([images[1]])[0]
  row = figure[header + side + gap: header + 2 * side + gap]   # the second example
  np.testing.assert_array_equal(row[:, :side], up(images[1]))
  np.testing.assert_array_equal(row[:, side + gap: 2 * side + gap], up(colours[labels[1]]))
  np.testing.assert_array_equal(row[:, 2 * (side + gap): 3 * side + 2 * gap],
                                up(colours[predicted.astype(np.uint8)]))


def test_figures_command_line(run, tmp_path, capsys):
  root, _, _, _ = run
  config_file = str(REPO / "configs" / "demo.py")
  overrides = as_flags({**SMALL_DEMO_SET, "data.data_dir": root / "tfds"})
  out = str(tmp_path / "q.png")
  figures.main(["qualitative", "--config", config_file, "--runs", f"ddfp={root / 'run'}",
                "--num", "2", "--out", out, "--", *overrides])
  assert "Wrote " + out in capsys.readouterr().out
  assert Image.open(out).size == (3 * (96 + 2) - 2, 14 + 2 * (96 + 2) - 2)
  with pytest.raises(SystemExit):
    figures.main(["qualitative", "--config", config_file, "--runs", "ddfp", "--out", out])
  assert "give NAME=WORKDIR" in capsys.readouterr().err
