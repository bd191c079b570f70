"""Predictions (the written PNGs against the evaluation, palettes, sizes, bad input) and
the figures drawn from them."""
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
  classes = predict.Predictor(config).predict(variables, [image])[0]
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
  predicted = predict.Predictor(config).predict(variables, [images[1]])[0]
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
  figures.main(["tsne", "--config", config_file, "--runs", f"ddfp={root / 'run'}",
                "--per-class", "10", "--num-images", "2", "--out", out, "--", *overrides])
  assert "ddfp: silhouette" in capsys.readouterr().out
  assert Image.open(out).size == (400, 400)
  with pytest.raises(SystemExit):
    figures.main(["density", "--config", config_file, "--workdir", str(root / "run"),
                  "--out", out, "--", *overrides, "--config.method=supervised"])
  assert "learns no feature density" in capsys.readouterr().err


def test_sample_pixels_takes_up_to_n_of_each_class_where_it_is():
  rs = np.random.RandomState(0)
  labels = [rs.randint(0, 3, (5, 7)) for _ in range(4)]
  labels[2][:] = 0                 # class 2 is rare: only in the other maps
  chosen = figures.sample_pixels(labels, num_classes=4, per_class=6, seed=1)
  picked = [tuple(p) + (i,) for i, points in enumerate(chosen) for p in points]
  assert len(set(picked)) == len(picked)          # no pixel twice
  classes = np.asarray([labels[i][r, c] for r, c, i in picked])
  available = np.bincount(np.concatenate([l.ravel() for l in labels]), minlength=4)
  assert np.bincount(classes, minlength=4).tolist() == np.minimum(available, 6).tolist()
  again = figures.sample_pixels(labels, num_classes=4, per_class=6, seed=1)
  assert all(np.array_equal(a, b) for a, b in zip(chosen, again))


def test_tsne_figure_has_a_panel_per_run(run, tmp_path):
  root, config, _, _ = run
  out = str(tmp_path / "t.png")
  result = figures.tsne(config, [("before", str(root / "run")), ("after", str(root / "run"))],
                        out, per_class=20, num_images=6)
  assert Image.open(out).size == (2 * 400, 400)
  assert result["before"] == result["after"]      # the same checkpoint, the same pixels
  assert -1.0 <= result["before"]["silhouette"] <= 1.0
  assert 0 < result["before"]["pixels"] <= 20 * 11


def test_density_figure_of_clean_and_perturbed_features(run, tmp_path):
  root, config, state, _ = run
  config = config.copy_and_resolve_references()
  config.semi.threshold = 0.0   # every pixel confident
  out = str(tmp_path / "d.png")
  result = figures.density(config, str(root / "run"), out, num_images=6, bins=20)
  assert Image.open(out).size == (600, 400)
  # Every pixel of the feature grid of the 6 scenes (48 x 48 in, the model's stride-4 grid).
  model = builders.build_model(config)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  grid = jax.eval_shape(lambda x: model.apply(variables, model.apply(
      variables, x, False, method="encode"), False, method="features"),
      jax.ShapeDtypeStruct((1, 48, 48, 3), np.float32)).shape[1:3]
  assert result["pixels"] == 6 * grid[0] * grid[1]
  means = result["mean_log_density"]
  # Descending the density lowers it, and more than a random step of the same norm.
  assert means["density_descending"] < means["clean"]
  assert means["density_descending"] < means["random"]
  other = config.copy_and_resolve_references()
  other.method = "supervised"
  with pytest.raises(predict.PredictError, match="learns no feature density"):
    figures.density(other, str(root / "run"), out)
