"""Training pictures: what each panel shows (that a short run's event file holds them:
tests/data/test_real_pipeline.py, on the Cityscapes layout with sliding windows)."""
import os

import jax
import numpy as np
from PIL import Image
import pytest

from ddfp_jax.data import palettes, sources
from ddfp_jax.methods import get_method
from ddfp_jax.tools import predict
from ddfp_jax.training import trainer, visuals
from ddfp_jax.training.checkpoint import Checkpointer
from ddfp_jax.training.state import create_train_state
from tiny import SMALL_DEMO_SET, tiny_config

EPS = 4.0


def _config(root, **overrides):
  # The paper's site: there a perturbed pixel's shift of v is eps exactly (closed form).
  return tiny_config(**SMALL_DEMO_SET, **{
      "data.data_dir": str(root / "tfds"), "train.num_images": 3, "semi.site": "feature",
      "ddfp.eps": EPS, "semi.threshold": 0.1, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with one checkpoint of an untrained DDFP state (its predictions and
  confidences vary enough)."""
  root = tmp_path_factory.mktemp("visuals")
  config = trainer.ready_config(_config(root))
  state = create_train_state(config, jax.random.key(0))
  workdir = str(root / "run")
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    ckpt.save(1, state)
  return config, workdir, state, visuals.TrainingImages(config)(state)


def test_every_panel_once_per_image(run):
  config, _, _, drawn = run
  assert sorted(drawn) == sorted(f"images/{p}" for p in
                                 visuals.PANELS + visuals.DENSITY_PANELS)
  side = config.data.demo_image_size
  for tag, images in drawn.items():
    assert images.shape == (3, side, side, 3) and images.dtype == np.uint8, tag


def test_panels_show_the_data_and_the_predictions(run):
  config, workdir, _, drawn = run
  images, labels = sources.demo_arrays(config, "validation")
  colours = palettes.palette("demo")
  np.testing.assert_array_equal(drawn["images/image"], images[:3])
  np.testing.assert_array_equal(drawn["images/ground_truth"], colours[labels[:3]])
  variables, _, _ = predict.load_variables(config, workdir)
  classes = predict.Predictor(config).predict(variables, list(images[:3]))
  np.testing.assert_array_equal(drawn["images/teacher"],
                                colours[np.stack(classes).astype(np.uint8)])


def test_confident_mask_and_perturbation_norm_against_their_definitions(run):
  config, _, state, _ = run
  method = get_method(config.method)
  maps_fn = visuals.make_maps(config, method.make_log_density(config))
  images, _ = sources.demo_arrays(config, "validation")
  teacher = {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}
  student = {"params": state.params, "batch_stats": state.batch_stats}
  x = (images[:1].astype(np.float32) - np.asarray(config.data.mean)) / np.asarray(
      config.data.std)
  maps = jax.device_get(maps_fn(teacher, student, state.extra, x.astype(np.float32),
                                np.ones(x.shape[:3], bool), jax.random.key(0)))
  # Paper's site: the shift of a perturbed pixel's feature is eps * g / ||g||, norm eps;
  # pixels that are not confident are not perturbed.
  norm = maps["perturbation_norm"]
  perturbed = norm > 0
  assert perturbed.any()
  np.testing.assert_array_equal(perturbed, maps["confident"])
  np.testing.assert_allclose(norm[perturbed], EPS, rtol=1e-4)
  # The confident panel is grey exactly where the teacher's confidence does not pass the
  # threshold (here the median, so that both kinds of pixel occur), the teacher's colour
  # elsewhere.
  config = config.copy_and_resolve_references()
  config.semi.threshold = float(np.median(maps["confidence"]))
  drawn = visuals.TrainingImages(config)(state)["images/confident_pseudo_label"][0]
  grey = np.all(drawn == visuals.NOT_CONFIDENT, axis=-1)
  sure = maps["confidence"] > config.semi.threshold
  assert 0 < sure.sum() < sure.size
  np.testing.assert_array_equal(grey[sure], False)
  np.testing.assert_array_equal(drawn[sure],
                                palettes.palette("demo")[maps["pseudo"][sure]])
  assert np.all(grey[~sure])


def test_a_method_without_a_density_gets_no_density_panels(tmp_path):
  config = trainer.ready_config(_config(tmp_path, method="supervised"))
  state = create_train_state(config, jax.random.key(1))
  drawn = visuals.TrainingImages(config)(state)
  assert sorted(drawn) == sorted(f"images/{p}" for p in visuals.PANELS)
