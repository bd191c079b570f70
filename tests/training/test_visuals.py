"""Training pictures: the event file of a short run holds them; what each panel shows."""
import glob
import io
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

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
      "data.data_dir": str(root / "tfds"), "total_steps": 1, "steps_per_epoch": 1,
      "train.eval_every": 1, "train.num_images": 3, "semi.site": "feature",
      "ddfp.eps": EPS, "semi.threshold": 0.1, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("visuals")
  config = _config(root)
  workdir = str(root / "run")
  trainer.train_and_evaluate(config, workdir)
  config = trainer.ready_config(config)
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state = ckpt.restore(create_train_state(config, jax.random.key(0)))
  return config, workdir, state


def _event_images(workdir):
  """{tag: [(H, W, 3) uint8, ...]} of every image summary in the run's event files."""
  found = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag.startswith("images/"):
          # An image summary's tensor: [width, height, PNG 1, PNG 2, ...] as strings.
          encoded = tf.make_ndarray(value.tensor)[2:]
          found[value.tag] = [np.asarray(Image.open(io.BytesIO(png))) for png in encoded]
  return found


def test_the_event_file_holds_every_panel(run):
  config, workdir, state = run
  written = _event_images(workdir)
  assert sorted(written) == sorted(f"images/{p}" for p in
                                   visuals.PANELS + visuals.DENSITY_PANELS)
  side = config.data.demo_image_size
  for tag, images in written.items():
    assert len(images) == 3, tag
    assert all(image.shape == (side, side, 3) for image in images), tag
  # The pictures are those of the final state, decoded from the PNGs as they were drawn.
  drawn = visuals.TrainingImages(config)(state)
  for tag, images in written.items():
    np.testing.assert_array_equal(np.stack(images), drawn[tag], err_msg=tag)


def test_panels_show_the_data_and_the_predictions(run):
  config, _, state = run
  drawn = visuals.TrainingImages(config)(state)
  images, labels = sources.demo_arrays(config, "validation")
  colours = palettes.palette("demo")
  np.testing.assert_array_equal(drawn["images/image"], images[:3])
  np.testing.assert_array_equal(drawn["images/ground_truth"], colours[labels[:3]])
  variables, _, _ = predict.load_variables(config, run[1])
  classes = predict.Predictor(config).predict(variables, list(images[:3]))
  np.testing.assert_array_equal(drawn["images/teacher"],
                                colours[np.stack(classes).astype(np.uint8)])


def test_confident_mask_and_perturbation_norm_against_their_definitions(run):
  config, _, state = run
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
