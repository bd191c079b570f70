"""The real datasets through the input pipeline and the trainer, on fake downloads in the
real layouts (`ddfp_jax.data.fake_layouts`): preparation on first use, split lists and
seeded splits, the Pascal classic/blended sources, errors, and a two-step training run.
"""
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import base
from ddfp_jax.training import trainer, visuals
from ddfp_jax.data import cityscapes
from ddfp_jax.data import fake_layouts
from ddfp_jax.data import pipeline
from ddfp_jax.data import sources
from ddfp_jax.data.errors import DatasetError, LabelError, SplitError
import tiny
import paths

REPO = paths.REPO
CITIES = {"train": {"aachen": 4, "bochum": 3}, "val": {"frankfurt": 3}}
CS_SHAPE = (40, 80)
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008", "2008_000015"]
VOC_VAL = ["2007_000033", "2007_000042"]
VOC_AUG_ONLY = ["2009_000001", "2009_000002", "2011_003271"]


@pytest.fixture(scope="module")
def cityscapes_download(tmp_path_factory):
  root = tmp_path_factory.mktemp("cityscapes_download")
  return root, fake_layouts.write_cityscapes(root, CITIES, CS_SHAPE)


@pytest.fixture(scope="module")
def voc_download(tmp_path_factory):
  root = tmp_path_factory.mktemp("voc_download")
  return (root,) + fake_layouts.write_voc(root, VOC_TRAIN, VOC_VAL, VOC_AUG_ONLY, (30, 40))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(name, manual_dir, data_dir, **data):
  config = base.get_config()
  config.steps_per_epoch = 2
  config.data.name = name
  config.data.num_classes = 19 if name == "cityscapes" else 21
  config.data.data_dir = data_dir
  config.data.manual_dir = str(manual_dir)
  config.data.crop_size = 24
  config.data.labeled_per_device = 2
  config.data.unlabeled_per_device = 2
  config.data.eval_per_device = 2
  for key, value in data.items():
    config.data[key] = value
  return config


def _cs_ids(city, frames):
  return [f"{city}/{city}_{i:06d}_000019" for i in range(frames)]


def _write_lists(directory, labeled, unlabeled, cityscapes_paths=True):
  directory.mkdir(parents=True, exist_ok=True)
  def line(i):
    if not cityscapes_paths:
      return i
    city = i.split("/")[0]
    return f"leftImg8bit/train/{city}/{i.split('/')[1]}_leftImg8bit.png"
  (directory / "labeled.txt").write_text("\n".join(map(line, labeled)) + "\n")
  (directory / "unlabeled.txt").write_text("\n".join(map(line, unlabeled)) + "\n")
  return str(directory)


def _loaded(source, index):
  image, label = source.load(tf.constant(index))
  return image.numpy(), label.numpy()


def test_cityscapes_split_lists_select_the_streams(cityscapes_download, tfds_dir, tmp_path):
  root, files = cityscapes_download
  labeled_ids = _cs_ids("bochum", 2)
  unlabeled_ids = _cs_ids("aachen", 4) + ["bochum/bochum_000002_000019"]
  split_dir = _write_lists(tmp_path / "2", labeled_ids, unlabeled_ids)
  config = _config("cityscapes", root, tfds_dir, split_dir=split_dir, num_labeled=2)
  pipeline.prepare(config)                     # from manual_dir, on first use
  assert pipeline.num_train_examples(config) == (2, 5)
  labeled, unlabeled = sources.train_sources(config)
  for source, ids in ((labeled, labeled_ids), (unlabeled, unlabeled_ids)):
    for index, name in enumerate(ids):
      image, label = _loaded(source, index)
      np.testing.assert_array_equal(image, files[name][0])
      np.testing.assert_array_equal(label, cityscapes.TRAIN_ID_LUT[files[name][1]])

  batch = next(pipeline.train_batches(config, local_device_count=2))
  assert batch["labeled_image"].shape == (2, 2, 24, 24, 3)
  assert set(np.unique(batch["labeled_label"])) <= set(range(19)) | {255}
  assert set(np.unique(batch["unlabeled_ignore"])) <= {0, 255}

  wrong_size = _config("cityscapes", root, tfds_dir, split_dir=split_dir, num_labeled=3)
  with pytest.raises(SplitError, match="lists 2 labeled examples but config.data.num_labeled "
                                       "is 3"):
    pipeline.num_train_examples(wrong_size)


def test_split_list_with_absent_examples_names_them(cityscapes_download, tfds_dir, tmp_path):
  root, _ = cityscapes_download
  split_dir = _write_lists(tmp_path / "bad", _cs_ids("aachen", 2) + _cs_ids("zurich", 3),
                           _cs_ids("bochum", 3))
  config = _config("cityscapes", root, tfds_dir, split_dir=split_dir)
  with pytest.raises(SplitError) as e:
    next(pipeline.train_batches(config))
  message = str(e.value)
  assert message.startswith("3 of the 5 labeled ids of")
  assert "zurich/zurich_000000_000019" in message and "\n" not in message


def test_seeded_split_is_reproducible_and_covers_the_rest(cityscapes_download, tfds_dir):
  root, _ = cityscapes_download
  config = _config("cityscapes", root, tfds_dir, num_labeled=3, split_seed=5)
  split = sources.train_split(config)
  assert len(split.labeled) == 3 and len(split.unlabeled) == 4
  assert sorted(split.labeled.tolist() + split.unlabeled.tolist()) == list(range(7))
  other = sources.train_split(_config("cityscapes", root, tfds_dir, num_labeled=3,
                                      split_seed=6))
  same = sources.train_split(_config("cityscapes", root, tfds_dir, num_labeled=3,
                                     split_seed=5))
  np.testing.assert_array_equal(split.labeled, same.labeled)
  assert not np.array_equal(split.labeled, other.labeled)
  with pytest.raises(SplitError, match="num_labeled"):
    sources.train_split(_config("cityscapes", root, tfds_dir, num_labeled=0))


def test_all_labeled_takes_every_training_image_as_labeled(cityscapes_download, tfds_dir):
  """The fully supervised upper bound: every image labeled, whatever the split keys say."""
  root, _ = cityscapes_download
  split = sources.train_split(_config("cityscapes", root, tfds_dir, num_labeled=3,
                                      all_labeled=True))
  assert split.labeled.tolist() == list(range(7)) == split.unlabeled.tolist()
  labeled, _ = sources.train_sources(_config("cityscapes", root, tfds_dir, all_labeled=True))
  assert labeled.size == 7


def test_pascal_classic_labels_from_fine_set_unlabeled_from_blended(voc_download, tfds_dir,
                                                                    tmp_path):
  root, images, fine, aug = voc_download
  labeled_ids = VOC_TRAIN[:2]
  unlabeled_ids = VOC_TRAIN[2:] + VOC_AUG_ONLY      # the blended set minus the labeled
  split_dir = _write_lists(tmp_path / "2", labeled_ids, unlabeled_ids,
                           cityscapes_paths=False)
  config = _config("pascal", root, tfds_dir, split_dir=split_dir)
  pipeline.prepare(config)                    # prepares classic and blended
  labeled, unlabeled = sources.train_sources(config)
  assert (labeled.size, unlabeled.size) == (2, 5)
  for index, name in enumerate(labeled_ids):
    np.testing.assert_array_equal(_loaded(labeled, index)[1], fine[name])
  for index, name in enumerate(unlabeled_ids):
    image = _loaded(unlabeled, index)[0]
    np.testing.assert_array_equal(image, tf.io.decode_jpeg(images[name]).numpy())

  drawn = sources.train_split(_config("pascal", root, tfds_dir, num_labeled=3))
  assert len(drawn.labeled) == 3 and len(drawn.unlabeled) == len(VOC_TRAIN + VOC_AUG_ONLY) - 3
  # Seeded classic splits label images of the fine set only.
  assert max(drawn.labeled) < len(VOC_TRAIN)

  blended = _config("pascal_blended", root, tfds_dir, num_labeled=2)
  labeled, _ = sources.train_sources(blended)
  names = sorted(VOC_TRAIN + VOC_AUG_ONLY)
  for index, i in enumerate(sources.train_split(blended).labeled):
    np.testing.assert_array_equal(_loaded(labeled, index)[1], aug[names[i]])


def test_centre_crop_evaluation_batches(voc_download, tfds_dir):
  root, _, fine, _ = voc_download
  config = _config("pascal", root, tfds_dir, num_labeled=2, eval_protocol="center_crop",
                   eval_crop=36)
  pipeline.prepare(config)
  batches = list(pipeline.eval_batches(config, local_device_count=1))
  assert len(batches) == 1 and batches[0]["image"].shape == (1, 2, 36, 36, 3)
  label = batches[0]["label"][0, 0]
  # 30 x 40 labels: 3 rows of 255 padded above and below, 2 columns cut on each side.
  np.testing.assert_array_equal(label[3:33], fine[sorted(VOC_VAL)[0]][:, 2:38])
  assert (label[:3] == 255).all() and (label[33:] == 255).all()


def test_label_values_outside_the_classes_name_the_file(voc_download, tfds_dir):
  """Prepared files whose labels do not fit the config's classes (here: a config that
  claims 3 of VOC's 21, bypassing the config check) stop the pipeline naming the example
  by its id in the dataset."""
  root = voc_download[0]
  config = _config("pascal", root, tfds_dir, num_labeled=2, num_classes=3)
  pipeline.prepare(config)
  with pytest.raises(LabelError, match=r"The label map of pascal validation example "
                     r"\d{4}_\d{6} holds the value\(s\) .*neither a class id \(0 to 2"):
    list(pipeline.eval_batches(config, local_device_count=1))


def test_unprepared_dataset_without_manual_dir_says_how_to_prepare(tmp_path):
  empty = str(tmp_path / "tfds")
  config = _config("cityscapes", tmp_path, empty)
  config.data.manual_dir = None
  with pytest.raises(DatasetError) as e:
    pipeline.prepare(config)
  message = str(e.value)
  assert "\n" not in message and empty in message
  assert "python -m ddfp_jax.data.prepare --dataset cityscapes" in message
  assert "leftImg8bit/{train,val}" in message and "cityscapes-dataset.com" in message

  config.data.manual_dir = str(tmp_path / "no_such_download")
  with pytest.raises(DatasetError, match="Cityscapes was not found in .*no_such_download"):
    pipeline.prepare(config)


def test_epochs_derive_the_schedule_from_the_unlabeled_set():
  config = base.get_config()
  config.epochs = 80
  config.data.unlabeled_per_device = 4
  # VOC classic 732: 9850 unlabeled images, 4 GPUs x 4 -> 615 steps per epoch, as the
  # release's log (49 200 iterations).
  resolved = trainer.resolve_schedule(config, 9850, 4)
  assert (resolved.steps_per_epoch, resolved.total_steps) == (615, 49_200)
  assert trainer.resolve_schedule(config, 9850, 1).steps_per_epoch == 2462
  config.epochs = 0
  assert trainer.resolve_schedule(config, 9850, 4) is config


def test_two_training_steps_on_the_cityscapes_layout(cityscapes_download, tfds_dir, tmp_path):
  root, _ = cityscapes_download
  config = tiny.tiny_config()
  config.data.name = "cityscapes"
  config.data.num_classes = 19
  config.data.data_dir = tfds_dir
  config.data.manual_dir = str(root)
  config.data.num_labeled = 3
  config.data.eval_per_device = 1
  config.data.eval_protocol = "sliding_window"     # 40 x 80 images, 6 windows of 32
  config.data.eval_window = 32
  # 4 unlabeled images, 2 per device on 4 devices: 1 step per epoch, so 2 steps: the flow
  # trains in the first, the density-descending perturbation runs in the second.
  config.epochs = 2
  config.total_steps = 0
  config.steps_per_epoch = 0
  config.schedule.sup_only_epochs = 0
  config.schedule.flow_start_epoch = 0
  config.train.log_every = 1
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  config.train.num_images = 2     # TensorBoard pictures at the evaluation
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert 0.0 <= results["student/miou"] <= 1.0
  assert results["student/per_class_iou"].shape == (19,)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints" / "latest")) == ["2"]
  # The event file holds every panel of the 2 validation images at their full size
  # (40 x 80, predicted with sliding windows), DDFP's density panels among them.
  pictures = _event_images(tmp_path / "run")
  assert sorted(pictures) == sorted(f"images/{p}" for p in
                                    visuals.PANELS + visuals.DENSITY_PANELS)
  for tag, images in pictures.items():
    assert [image.shape for image in images] == [(40, 80, 3)] * 2, tag
  first, _ = sources.eval_source(config).load(0)
  np.testing.assert_array_equal(pictures["images/image"][0], np.asarray(first))


def _event_images(workdir):
  """{tag: [(H, W, 3) uint8, ...]} of every image summary in a run's event files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  found = {}
  for path in pathlib.Path(workdir).glob("events.out.tfevents.*"):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag.startswith("images/"):
          # An image summary's tensor: [width, height, PNG, PNG, ...] as strings.
          encoded = tf.make_ndarray(value.tensor)[2:]
          found[value.tag] = [np.asarray(Image.open(io.BytesIO(png))) for png in encoded]
  return found


def test_main_without_the_dataset_exits_with_the_preparation_message(tmp_path):
  config_file = REPO / "configs" / "ddfp" / "cityscapes_1_4.py"
  if not config_file.exists():
    pytest.skip("configs/ddfp/cityscapes_1_4.py not present")
  data_dir = tmp_path / "tfds"
  result = subprocess.run(
      [sys.executable, "main.py", "--config", str(config_file), "--workdir",
       str(tmp_path / "run"), f"--config.data.data_dir={data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1
  assert str(data_dir) in error[0]
  assert "python -m ddfp_jax.data.prepare --dataset cityscapes" in error[0]
  assert not (tmp_path / "run" / "checkpoints").exists()
