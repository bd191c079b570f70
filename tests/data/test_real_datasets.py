"""Cityscapes and Pascal VOC builders, split lists and the prepare command.

The datasets are tiny fixtures written in the real on-disk layouts. The standard split
lists are read from the shared splits directory when it is present (data, never copied
into the project).
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers.labels import labels as cs_table
from PIL import Image

from ddfp_jax.data import cityscapes
from ddfp_jax.data import fake_layouts
from ddfp_jax.data import prepare
from ddfp_jax.data import real_datasets
from ddfp_jax.data import splits
from ddfp_jax.data import voc
from ddfp_jax.data.errors import DatasetError, LabelError, LayoutError, SplitError
import paths

SHARED_SPLITS = paths.SHARED / "splits"
REPO = paths.REPO

# Cityscapes: city -> number of frames, per split folder.
CITIES = {"train": {"aachen": 2, "bochum": 3}, "val": {"frankfurt": 2}}
CS_SHAPE = (6, 10)
# VOC ids: train.txt, val.txt, and ids that only SegmentationClassAug labels.
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008"]
VOC_VAL = ["2007_000033", "2007_000042"]
VOC_AUG_ONLY = ["2009_000001", "2011_003271"]
VOC_SHAPE = (7, 9)


def _expected_train_ids(raw: np.ndarray) -> np.ndarray:
  """cityscapesScripts' table applied pixel by pixel, independently of the LUT."""
  by_id = {label.id: label.trainId for label in cs_table}
  out = np.empty(raw.shape, np.uint8)
  for index, value in np.ndenumerate(raw):
    train_id = by_id.get(int(value), 255)
    out[index] = 255 if train_id in (-1, 255) else train_id
  return out


_save_png = fake_layouts.save_png


def _copy_tree(src: pathlib.Path, src_root: pathlib.Path, dst_root: pathlib.Path) -> None:
  """Copies the files under `src` to the same place relative to `dst_root`."""
  for path in src.rglob("*"):
    if path.is_file():
      dst = dst_root / path.relative_to(src_root)
      dst.parent.mkdir(parents=True, exist_ok=True)
      dst.write_bytes(path.read_bytes())


# --- fixtures in the real layouts ---------------------------------------------------------


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
  """leftImg8bit + gtFine labelIds; every raw id 0..33 appears (voids 0..6 included)."""
  root = tmp_path_factory.mktemp("cityscapes")
  return root, fake_layouts.write_cityscapes(root, CITIES, CS_SHAPE)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
  """VOCdevkit/VOC2012 with palette labels, plus SegmentationClassAug next to it."""
  root = tmp_path_factory.mktemp("voc")
  return (root,) + fake_layouts.write_voc(root, VOC_TRAIN, VOC_VAL, VOC_AUG_ONLY, VOC_SHAPE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _read_split(builder, split):
  """[(name, example)] of a prepared split in index order; images and labels encoded."""
  source = real_datasets.encoded_source(builder, split)
  return [(source[i]["name"].decode(), source[i]) for i in range(len(source))]


def _decoded_label(example) -> np.ndarray:
  return tf.io.decode_png(example["label"]).numpy()


# --- Cityscapes -----------------------------------------------------------------------------


def test_train_id_lut_follows_the_official_table():
  np.testing.assert_array_equal(cityscapes.TRAIN_ID_LUT,
                                _expected_train_ids(np.arange(256, dtype=np.uint8)))
  lut = cityscapes.TRAIN_ID_LUT
  assert (lut[7], lut[26], lut[33]) == (0, 13, 18)      # road, car, bicycle
  assert (lut[:7] == 255).all()                          # void ids
  assert sorted(set(lut.tolist()) - {255}) == list(range(cityscapes.NUM_CLASSES))
  assert len(cityscapes.CLASS_NAMES) == 19 and cityscapes.CLASS_NAMES[13] == "car"


def test_map_label_ids_numpy_and_tf_agree_and_send_unknown_ids_to_ignore():
  raw = np.array([[-1, 0, 7, 26], [33, 34, 255, 70000]], np.int64)
  expected = np.array([[255, 255, 0, 13], [18, 255, 255, 255]], np.uint8)
  np.testing.assert_array_equal(cityscapes.map_label_ids(raw), expected)
  np.testing.assert_array_equal(cityscapes.map_label_ids(tf.constant(raw)).numpy(), expected)
  mapped_in_graph = tf.function(cityscapes.map_label_ids)(tf.constant(raw, tf.int32))
  np.testing.assert_array_equal(mapped_in_graph.numpy(), expected)
  u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
  np.testing.assert_array_equal(cityscapes.map_label_ids(u8), _expected_train_ids(u8))
  with pytest.raises(TypeError):
    cityscapes.map_label_ids(np.zeros(3, np.float32))


def test_cityscapes_builder_reads_the_files_and_maps_labels(cityscapes_root, data_dir):
  root, files = cityscapes_root
  builder = real_datasets.prepare("cityscapes", str(root), data_dir)
  assert builder.name == "ddfp_cityscapes"
  expected_names = {
      "train": sorted(f"{c}/{c}_{i:06d}_000019" for c, n in CITIES["train"].items()
                      for i in range(n)),
      "validation": sorted(f"{c}/{c}_{i:06d}_000019" for c, n in CITIES["val"].items()
                           for i in range(n))}
  for split, names in expected_names.items():
    assert builder.info.splits[split].num_examples == len(names)
    assert list(real_datasets.example_names(builder, split)) == names
    read = _read_split(builder, split)
    assert [name for name, _ in read] == names            # index order = recorded order
    for name, example in read:
      image, raw = files[name]
      np.testing.assert_array_equal(tf.io.decode_png(example["image"]).numpy(), image)
      label = _decoded_label(example)
      assert label.shape == CS_SHAPE + (1,)
      np.testing.assert_array_equal(label[..., 0], _expected_train_ids(raw))
  # The builder's own decoders give the same arrays.
  decoded = builder.as_data_source(split="train")[3]
  assert decoded["name"].decode() == expected_names["train"][3]
  np.testing.assert_array_equal(decoded["image"], files[expected_names["train"][3]][0])


def test_cityscapes_label_files_with_foreign_values_are_rejected(tmp_path):
  bad = tmp_path / "x_000000_000000_gtFine_labelIds.png"
  _save_png(bad, np.array([[7, 40], [26, 200]], np.uint8))
  with pytest.raises(LabelError, match=r"values 40, 200"):
    cityscapes.read_train_ids(str(bad))
  rgb = tmp_path / "rgb.png"
  _save_png(rgb, np.zeros((2, 2, 3), np.uint8))
  with pytest.raises(LayoutError, match="single-channel"):
    cityscapes.read_train_ids(str(rgb))


def test_prepare_stops_at_a_label_file_with_foreign_values(tmp_path):
  root = tmp_path / "bad"
  for folder, city in (("train", "aachen"), ("val", "lindau")):
    stem = f"{city}_000000_000019"
    _save_png(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png",
              np.zeros(CS_SHAPE + (3,), np.uint8))
    _save_png(root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png",
              np.full(CS_SHAPE, 40 if folder == "val" else 7, np.uint8))
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(LabelError, match=r"lindau_000000_000019_gtFine_labelIds\.png contains "
                                       r"values 40"):
    real_datasets.prepare("cityscapes", str(root), data_dir)
  assert not real_datasets.is_prepared("cityscapes", data_dir)


def _one_paragraph(message: str, directory) -> None:
  assert "\n" not in message
  assert str(directory) in message
  assert "python -m ddfp_jax.data.prepare" in message


def test_cityscapes_layout_errors_name_directory_and_what_is_missing(cityscapes_root,
                                                                     tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(LayoutError, match="does not exist") as e:
    cityscapes.check_layout(str(missing))
  _one_paragraph(str(e.value), missing)
  assert "leftImg8bit_trainvaltest.zip" in str(e.value)

  partial = tmp_path / "partial"
  (partial / "leftImg8bit" / "train").mkdir(parents=True)
  (partial / "leftImg8bit" / "val").mkdir(parents=True)
  (partial / "gtFine" / "train").mkdir(parents=True)
  with pytest.raises(LayoutError, match=r"gtFine/val is missing") as e:
    cityscapes.check_layout(str(partial))
  _one_paragraph(str(e.value), partial)

  # Every image needs its label: drop two label files of a copy of the fixture.
  root, _ = cityscapes_root
  unlabeled = tmp_path / "unlabeled"
  _copy_tree(root, root, unlabeled)
  for stem in ("aachen_000001_000019", "bochum_000000_000019"):
    city = stem.split("_")[0]
    (unlabeled / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png").unlink()
  with pytest.raises(LayoutError, match=r"2 images have no label file") as e:
    cityscapes.check_layout(str(unlabeled))
  _one_paragraph(str(e.value), unlabeled)
  assert "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png" in str(e.value)
  assert cityscapes.check_layout(str(root)) == {"train": 5, "validation": 2}


# --- Pascal VOC -----------------------------------------------------------------------------


def test_color_palette_is_the_voc_colour_map():
  palette = voc.color_palette()
  assert palette[0].tolist() == [0, 0, 0]
  assert palette[1].tolist() == [128, 0, 0]          # aeroplane
  assert palette[15].tolist() == [192, 128, 128]     # person
  assert palette[255].tolist() == [224, 224, 192]    # boundary
  assert len({tuple(c) for c in palette.tolist()}) == 256


@pytest.mark.parametrize("config", ["classic", "blended"])
def test_voc_builders_read_images_and_palette_indices(voc_root, data_dir, config):
  root, images, fine, aug = voc_root
  dataset = "pascal" if config == "classic" else "pascal_blended"
  builder = real_datasets.prepare(dataset, str(root), data_dir)
  assert builder.name == "ddfp_voc" and builder.builder_config.name == config
  train_ids = sorted(VOC_TRAIN) if config == "classic" else sorted(VOC_TRAIN + VOC_AUG_ONLY)
  train_labels = fine if config == "classic" else aug
  for split, ids, labels in (("train", train_ids, train_labels),
                             ("validation", sorted(VOC_VAL), fine)):
    read = _read_split(builder, split)
    assert [name for name, _ in read] == ids
    assert list(real_datasets.example_names(builder, split)) == ids
    for name, example in read:
      assert example["image"] == images[name]          # the JPEG bytes, not re-encoded
      # Palette indices, not colours: the labels hold values 0..20 and 255 only.
      np.testing.assert_array_equal(_decoded_label(example)[..., 0], labels[name])


def test_palette_png_is_read_as_indices(tmp_path):
  indices = np.array([[0, 15, 255], [1, 20, 7]], np.uint8)
  path = tmp_path / "p.png"
  _save_png(path, indices, palette=voc.color_palette())
  with Image.open(path) as image:
    assert np.asarray(image.convert("RGB"))[0, 1].tolist() == [192, 128, 128]
  np.testing.assert_array_equal(voc.read_class_indices(str(path)), indices)


def test_voc_out_of_range_labels_raise_naming_file_and_values(tmp_path):
  path = tmp_path / "2007_000032.png"
  _save_png(path, np.array([[0, 21], [254, 255]], np.uint8),
            palette=voc.color_palette())
  with pytest.raises(LabelError, match=r"2007_000032\.png contains values 21, 254"):
    voc.read_class_indices(str(path))
  colour = tmp_path / "colour.png"
  _save_png(colour, voc.color_palette()[np.array([[0, 15]])])
  with pytest.raises(LayoutError, match="'RGB' image"):
    voc.read_class_indices(str(colour))


def test_prepare_stops_at_an_out_of_range_voc_label(voc_root, tmp_path):
  root, *_ = voc_root
  copy = tmp_path / "voc"
  _copy_tree(root / "VOCdevkit", root, copy)
  bad = copy / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL[0]}.png"
  _save_png(bad, np.full(VOC_SHAPE, 30, np.uint8), palette=voc.color_palette())
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(LabelError, match=rf"{VOC_VAL[0]}\.png contains values 30 "):
    real_datasets.prepare("pascal", str(copy), data_dir)
  assert not real_datasets.is_prepared("pascal", data_dir)


def test_voc_layout_errors(voc_root, tmp_path):
  root, *_ = voc_root
  assert voc.check_layout(str(root), "blended") == {"train": 5, "validation": 2}
  for where in (tmp_path / "nowhere", tmp_path):
    with pytest.raises(LayoutError) as e:
      voc.check_layout(str(where), "classic")
    _one_paragraph(str(e.value), where)
    assert "VOCdevkit" in str(e.value)

  # Without SegmentationClassAug the classic set is complete, the blended one is not.
  copy = tmp_path / "copy"
  _copy_tree(root / "VOCdevkit", root, copy)
  assert voc.check_layout(str(copy), "classic") == {"train": 3, "validation": 2}
  with pytest.raises(LayoutError, match="SegmentationClassAug") as e:
    voc.check_layout(str(copy), "blended")
  _one_paragraph(str(e.value), copy)

  # The aug folder may also sit inside VOC2012, but not in both places.
  inside = copy / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
  inside.mkdir()
  for src in (root / "SegmentationClassAug").iterdir():
    (inside / src.name).write_bytes(src.read_bytes())
  assert voc.check_layout(str(copy), "blended") == {"train": 5, "validation": 2}
  (copy / "SegmentationClassAug").mkdir()
  with pytest.raises(LayoutError, match="two SegmentationClassAug folders"):
    voc.check_layout(str(copy), "blended")
  assert voc.check_layout(str(copy), "classic") == {"train": 3, "validation": 2}

  (copy / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_TRAIN[0]}.jpg").unlink()
  (copy / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL[1]}.png").unlink()
  with pytest.raises(LayoutError, match="2 files named by the image lists are missing") as e:
    voc.check_layout(str(copy), "classic")
  assert f"JPEGImages/{VOC_TRAIN[0]}.jpg" in str(e.value)
  assert f"SegmentationClass/{VOC_VAL[1]}.png" in str(e.value)


# --- split lists ----------------------------------------------------------------------------


def test_read_split_list_tolerates_formatting_and_rejects_other_datasets(tmp_path):
  path = tmp_path / "labeled.txt"
  path.write_bytes(b"leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png  \r\n"
                   b"\r\n"
                   b"bochum/bochum_000002_000019\r\n"
                   b"leftImg8bit/train/bochum/bochum_000001_000019_leftImg8bit.png "
                   b"gtFine/train/bochum/bochum_000001_000019_gtFine_labelIds.png\r\n\r\n")
  assert splits.read_split_list(str(path), "cityscapes") == [
      "aachen/aachen_000000_000019", "bochum/bochum_000002_000019",
      "bochum/bochum_000001_000019"]
  path.write_text("2007_000032\n  2007_000039  \n\nJPEGImages/2008_000008.jpg\n")
  assert splits.read_split_list(str(path), "pascal") == [
      "2007_000032", "2007_000039", "2008_000008"]
  with pytest.raises(SplitError, match=r"line 1: '2007_000032'"):
    splits.read_split_list(str(path), "cityscapes")
  path.write_text("2007_000032\n2007_000032\n")
  with pytest.raises(SplitError, match="more than once"):
    splits.read_split_list(str(path), "pascal")
  with pytest.raises(SplitError, match="Cannot read"):
    splits.read_split_list(str(tmp_path / "absent.txt"), "pascal")


def test_split_from_directory_requires_disjoint_lists(tmp_path):
  (tmp_path / "labeled.txt").write_text("2007_000032\n2007_000039\n")
  (tmp_path / "unlabeled.txt").write_text("2008_000008\n2007_000039\n")
  with pytest.raises(SplitError, match=r"1 examples as both labeled and unlabeled: "
                                       r"2007_000039"):
    splits.split_from_directory(str(tmp_path), "pascal")
  (tmp_path / "unlabeled.txt").write_text("2008_000008\n")
  assert splits.split_from_directory(str(tmp_path), "pascal") == splits.Split(
      ("2007_000032", "2007_000039"), ("2008_000008",))


def test_draw_seeded_split_is_a_reproducible_partition():
  ids = [f"2007_{i:06d}" for i in range(50)]
  a = splits.draw_seeded_split(ids, 12, seed=3)
  assert a == splits.draw_seeded_split(list(reversed(ids)), 12, seed=3)
  assert a != splits.draw_seeded_split(ids, 12, seed=4)
  assert len(a.labeled) == 12 and sorted(a.labeled + a.unlabeled) == ids
  with pytest.raises(SplitError):
    splits.draw_seeded_split(ids, 51, seed=0)


def test_split_list_naming_absent_files_reports_them(cityscapes_root, data_dir, tmp_path):
  root, _ = cityscapes_root
  builder = real_datasets.prepare("cityscapes", str(root), data_dir)
  available = real_datasets.example_names(builder, "train")
  lines = [f"leftImg8bit/train/aachen/aachen_{i:06d}_000019_leftImg8bit.png"
           for i in range(9)]
  (tmp_path / "labeled.txt").write_text("\n".join(lines) + "\n")
  ids = splits.read_split_list(str(tmp_path / "labeled.txt"), "cityscapes")
  splits.check_ids_exist(ids[:2], available, "labeled ids")
  with pytest.raises(SplitError) as e:
    splits.check_ids_exist(ids, available, "labeled ids")
  message = str(e.value)
  assert message.startswith("7 of the 9 labeled ids are not in the prepared dataset")
  assert "aachen/aachen_000002_000019, aachen/aachen_000003_000019" in message
  assert "(7 in all)" in message and "same dataset version" in message
  assert isinstance(e.value, DatasetError)


_STANDARD = {"cityscapes": ([186, 372, 744, 1488], 2975),
             "pascal": ([92, 183, 366, 732, 1464, 662, 1323, 2646, 5291], 10582)}


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="standard split lists not present")
@pytest.mark.parametrize("dataset", sorted(_STANDARD))
def test_standard_split_lists_parse(dataset):
  sizes, total = _STANDARD[dataset]
  union = None
  for size in sizes:
    split = splits.split_from_directory(str(SHARED_SPLITS / dataset / str(size)), dataset)
    assert len(split.labeled) == size
    if dataset == "pascal" and size <= 1464:
      # Classic labeled images are VOC train.txt images, the 1464 list's labeled ones.
      classic = splits.read_split_list(str(SHARED_SPLITS / "pascal/1464/labeled.txt"),
                                       "pascal")
      assert set(split.labeled) <= set(classic)
    assert len(split.labeled) + len(split.unlabeled) == total
    # Every split of a dataset partitions the same training set.
    ids = set(split.labeled) | set(split.unlabeled)
    assert union is None or ids == union
    union = ids
  val = splits.read_split_list(str(SHARED_SPLITS / dataset / "val.txt"), dataset)
  assert len(val) == (500 if dataset == "cityscapes" else 1449)
  assert not set(val) & union
  if dataset == "cityscapes":
    assert all(splits.cityscapes_id(i) == i for i in sorted(union)[:5])


# --- the prepare command ----------------------------------------------------------------------


def test_prepare_reports_counts_and_location(cityscapes_root, tmp_path, capsys):
  root, _ = cityscapes_root
  data_dir = str(tmp_path / "tfds")
  prepare.run("cityscapes", str(root), data_dir)
  out = capsys.readouterr().out
  assert f"found train 5, validation 2 examples in {root}" in out
  assert "writing the TFDS files" in out
  assert "train: 5 examples written" in out and "validation: 2 examples written" in out
  assert f"ready in {data_dir}" in out
  prepare.run("cityscapes", str(root), data_dir)
  assert "already prepared" in capsys.readouterr().out


def test_prepare_command_fails_in_one_paragraph_without_traceback(tmp_path):
  missing = tmp_path / "no_such_dir"
  result = subprocess.run(
      [sys.executable, "-m", "ddfp_jax.data.prepare", "--dataset", "cityscapes",
       "--manual_dir", str(missing), "--data_dir", str(tmp_path / "tfds")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1
  assert f"Cityscapes was not found in {missing}" in error_lines[0]
  assert not (tmp_path / "tfds").exists()
