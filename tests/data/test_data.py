"""Digit-scenes set, augmentation ops and the train/eval batch iterators."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from configs import base
from ddfp_jax.data import augment
from ddfp_jax.data import demo
from ddfp_jax.data import errors
from ddfp_jax.data import pipeline
from ddfp_jax.data import sources

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = base.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.data.demo_image_size = 48
  c.data.demo_labeled = 6
  c.data.demo_unlabeled = 20
  c.data.demo_validation = 11
  c.data.crop_size = 32
  c.data.labeled_per_device = 2
  c.data.unlabeled_per_device = 3
  c.data.eval_per_device = 2
  # Tiny epochs: the labeled stream repeats within an epoch, the unlabeled one cycles
  # when 4 devices ask for more than 20 examples per epoch.
  c.steps_per_epoch = 3
  return c


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- the scenes ---------------------------------------------------------------------------


def test_scene_generation_is_deterministic_and_varies_by_index():
  a = demo.generate_scene("labeled", 3, image_size=48, seed=0)
  b = demo.generate_scene("labeled", 3, image_size=48, seed=0)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = demo.generate_scene("labeled", 4, image_size=48, seed=0)
  d = demo.generate_scene("labeled", 3, image_size=48, seed=1)
  assert not np.array_equal(a.image, c.image)
  assert not np.array_equal(a.image, d.image)
  assert a.image.shape == (48, 48, 3) and a.image.dtype == np.uint8
  assert a.label.shape == (48, 48) and a.label.dtype == np.uint8


@pytest.mark.parametrize("split,num", [("labeled", 40), ("validation", 60)])
def test_labels_match_the_drawn_digits_and_stand_out(split, num):
  _, targets = demo._digits()  # pylint: disable=protected-access
  seen = set()
  for i in range(num):
    scene = demo.generate_scene(split, i, image_size=96, seed=0)
    classes = set(np.unique(scene.label).tolist())
    assert classes <= set(range(demo.NUM_CLASSES))
    assert demo._DIGITS_PER_SCENE[0] <= len(scene.digit_samples) <= demo._DIGITS_PER_SCENE[1]
    # Every drawn digit keeps labelled pixels of its own class, and no other class appears.
    assert classes - {0} == {1 + int(targets[s]) for s in scene.digit_samples}
    seen |= classes
    # Each digit stroke differs clearly in colour from the background around it.
    image = scene.image.astype(np.float64)
    # Per class: digits may touch, and two touching digits have different colours.
    strokes = []
    for c in classes - {0}:
      components, count = ndimage.label(scene.label == c)
      strokes += [components == j for j in range(1, count + 1)]
    for stroke in strokes:
      if stroke.sum() < 20:
        continue
      ring = (ndimage.binary_dilation(stroke, iterations=3)
              & ~ndimage.binary_dilation(stroke, iterations=1) & (scene.label == 0))
      if ring.sum() < 10:   # a fragment enclosed by other digits has no background ring
        continue
      # The labelled stroke includes soft, blended edges: compare its core.
      core = ndimage.binary_erosion(stroke)
      core = core if core.sum() >= 5 else stroke
      assert np.linalg.norm(image[core].mean(0) - image[ring].mean(0)) > 40.0
  assert seen == set(range(demo.NUM_CLASSES))


def test_validation_digits_are_disjoint_from_train_digits():
  def samples(split, num):
    return set(np.concatenate([demo.generate_scene(split, i, image_size=32, seed=0)
                               .digit_samples for i in range(num)]).tolist())

  train = samples("labeled", 40) | samples("unlabeled", 100)
  validation = samples("validation", 100)
  assert not train & validation
  assert max(train) < demo.TRAIN_DIGIT_SAMPLES <= min(validation)
  assert not set(demo.digit_sample_pool("validation")) & set(demo.digit_sample_pool("labeled"))


def test_tfds_builder_serves_the_generated_scenes(config):
  for split, num in (("labeled", 6), ("unlabeled", 20), ("validation", 11)):
    examples = list(demo.load_demo_split(config, split).as_numpy_iterator())
    assert [int(e["index"]) for e in examples] == list(range(num))
    for e in examples:
      scene = demo.generate_scene(split, int(e["index"]), image_size=48, seed=0)
      np.testing.assert_array_equal(e["image"], scene.image)
      np.testing.assert_array_equal(e["label"], scene.label)
  name = demo.builder_config_for(config).name
  assert name == "s48_l6_u20_v11_seed0"
  assert (pathlib.Path(config.data.data_dir) / "digit_scenes" / name / str(demo.DigitScenes.VERSION)).is_dir()
  other = demo.make_builder_config(48, 6, 21, 11, 0)
  assert other.name != name


def test_night_domain_has_its_own_scenes_look_and_coarser_labels(config):
  """The second domain (USSS's setting): labels 1 + digit // 2, darker and grainier
  backgrounds than day, scenes of their own, served by their own builder config."""
  _, targets = demo._digits()  # pylint: disable=protected-access
  assert demo.class_names("night") == ("background", "0-1", "2-3", "4-5", "6-7", "8-9")
  assert len(demo.class_names("day")) == demo.NUM_CLASSES
  dark, bright = [], []
  for i in range(12):
    night = demo.generate_scene("labeled", i, image_size=48, seed=0, domain="night")
    day = demo.generate_scene("labeled", i, image_size=48, seed=0)
    assert not np.array_equal(night.digit_samples, day.digit_samples)
    assert set(np.unique(night.label).tolist()) - {0} == {
        1 + int(targets[s]) // 2 for s in night.digit_samples}
    dark.append(night.image[night.label == 0].mean())
    bright.append(day.image[day.label == 0].mean())
  assert max(dark) < 70 < min(bright)      # background grey levels
  c = config.copy_and_resolve_references()
  c.data.demo_domain = "night"
  assert demo.builder_config_for(c).name == "s48_l6_u20_v11_seed0_night"
  first = next(demo.load_demo_split(c, "labeled").as_numpy_iterator())
  np.testing.assert_array_equal(
      first["label"], demo.generate_scene("labeled", 0, image_size=48, seed=0,
                                          domain="night").label)
  with pytest.raises(ValueError, match="Unknown digit-scenes domain 'dusk'"):
    demo.domain_spec("dusk")


# --- augmentation ops ---------------------------------------------------------------------

_RNG = np.random.RandomState(0)
_IMAGE = _RNG.randint(0, 256, size=(30, 45, 3)).astype(np.uint8)
_LABEL = _RNG.randint(0, 11, size=(30, 45)).astype(np.uint8)
_IGNORE = np.zeros((30, 45), np.uint8)
_STRONG = dict(color_jitter_prob=0.8, brightness=0.5, contrast=0.5, saturation=0.5,
               hue=0.25, grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0))

_OPS = {
    "rescale": lambda s: augment.random_rescale(_IMAGE, _LABEL, s, (0.5, 2.0), _IGNORE),
    "crop_and_pad": lambda s: augment.random_crop_and_pad(_IMAGE, _LABEL, _IGNORE, s, 40),
    "rescale_crop": lambda s: augment.random_rescale_crop(_IMAGE, _LABEL, _IGNORE, s,
                                                          s + 1, (0.5, 2.0), 40),
    "flip": lambda s: augment.random_flip(_IMAGE, _LABEL, _IGNORE, s),
    "color_jitter": lambda s: augment.color_jitter(_IMAGE, s, 0.5, 0.5, 0.5, 0.25),
    "blur": lambda s: augment.gaussian_blur(
        _IMAGE, tf.random.stateless_uniform([], s, 0.1, 2.0), 2.0),
    "strong": lambda s: augment.strong_augment(_IMAGE, s, **_STRONG),
    "normalize": lambda s: augment.normalize(_IMAGE, MEAN, STD) + tf.cast(s[0], tf.float32),
}


@pytest.mark.parametrize("name", sorted(_OPS))
def test_op_is_the_same_eagerly_and_inside_tf_data(name):
  op = _OPS[name]
  seeds = np.array([[0, 0], [1, 2], [7, 3], [123, 456], [5, 9], [42, 1]], np.int64)

  def pack(out):
    out = out if isinstance(out, tuple) else (out,)
    return tuple(o for o in out if o is not None)

  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: pack(op(s)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  for seed, in_data in zip(seeds, ds.as_numpy_iterator()):
    eager = pack(op(tf.constant(seed)))
    assert len(eager) == len(in_data)
    for e, d in zip(eager, in_data):
      np.testing.assert_array_equal(np.asarray(e), d)


def test_rescale_keeps_the_long_side_within_range_and_the_aspect():
  for h, w in ((30, 45), (45, 30)):
    image, label = tf.zeros([h, w, 3], tf.uint8), tf.zeros([h, w], tf.uint8)

    def size(seed, image=image, label=label):
      out_image, out_label, _ = augment.random_rescale(image, label, seed, (0.5, 2.0))
      return tf.shape(out_image)[:2], tf.shape(out_label)

    seeds = tf.data.Dataset.range(200).map(lambda i: tf.stack([i, 11]))
    sizes = [(a, b) for a, b in seeds.map(size).as_numpy_iterator()]
    longs, shorts = [], []
    for image_hw, label_hw in sizes:
      np.testing.assert_array_equal(image_hw, label_hw)
      long_side, short_side = (image_hw[0], image_hw[1]) if h > w else (image_hw[1],
                                                                         image_hw[0])
      assert 22 <= long_side <= 90  # int(0.5 * 45), int(2.0 * 45)
      assert short_side == int(30 * long_side / 45 + 0.5)
      longs.append(long_side)
      shorts.append(short_side)
    # The whole range is reached, not a fixed scale.
    assert min(longs) <= 26 and max(longs) >= 86


@pytest.mark.parametrize("crop", [8, 33, 70])
def test_rescale_crop_equals_rescale_then_crop(crop):
  """The fused op computes only the window, with the same draws and the same result."""
  rng = np.random.RandomState(crop)
  for trial in range(25):
    h, w = rng.randint(9, 90, size=2)
    image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    label = rng.randint(0, 21, (h, w)).astype(np.uint8)
    ignore = rng.randint(0, 2, (h, w)).astype(np.uint8)
    s_rescale, s_crop = tf.constant([trial, 1], tf.int64), tf.constant([trial, 2], tf.int64)
    full = augment.random_rescale(image, label, s_rescale, (0.5, 2.0), ignore)
    expected = augment.random_crop_and_pad(*full, s_crop, crop, ignore_pad=7)
    fused = augment.random_rescale_crop(image, label, ignore, s_rescale, s_crop,
                                        (0.5, 2.0), crop, ignore_pad=7)
    np.testing.assert_allclose(fused[0].numpy(), expected[0].numpy(), atol=5e-3)
    np.testing.assert_array_equal(fused[1].numpy(), expected[1].numpy())
    np.testing.assert_array_equal(fused[2].numpy(), expected[2].numpy())


def test_rescale_uses_nearest_for_labels():
  label = tf.constant(np.random.RandomState(1).randint(0, 11, (20, 20)), tf.uint8)
  for seed in range(5):
    _, out, ignore = augment.random_rescale(tf.zeros([20, 20, 3]), label, [seed, 0],
                                            (0.5, 2.0), tf.zeros_like(label))
    assert out.dtype == tf.uint8
    assert set(np.unique(out.numpy())) <= set(np.unique(label.numpy()))
    assert not np.any(ignore.numpy())


def test_crop_pads_with_zero_and_255_and_keeps_the_data_together():
  yy, xx = np.mgrid[0:20, 0:24]
  image = np.stack([yy, xx, np.full_like(yy, 7)], -1).astype(np.uint8) + 1
  label = (yy % 11).astype(np.uint8)
  ignore = np.zeros((20, 24), np.uint8)
  out_image, out_label, out_ignore = (t.numpy() for t in augment.random_crop_and_pad(
      image, label, ignore, tf.constant([3, 4]), 32))
  assert out_image.shape == (32, 32, 3) and out_image.dtype == np.float32
  # Smaller than the crop on both sides: the padded image is exactly the crop, the data
  # sits top-left and the rest is padding.
  np.testing.assert_array_equal(out_image[:20, :24], image)
  np.testing.assert_array_equal(out_label[:20, :24], label)
  np.testing.assert_array_equal(out_ignore[:20, :24], 0)
  for pad in (np.s_[20:, :], np.s_[:, 24:]):
    assert np.all(out_image[pad] == 0)
    assert np.all(out_label[pad] == 255)
    assert np.all(out_ignore[pad] == 255)
  # Larger than the crop: image, label and ignore are cut at the same random window.
  big_y, big_x = np.mgrid[0:50, 0:60]
  big_image = np.stack([big_y, big_x, big_x], -1).astype(np.uint8)
  offsets = set()
  for seed in range(8):
    im, lab, ign = (t.numpy() for t in augment.random_crop_and_pad(
        big_image, big_y.astype(np.uint8), big_x.astype(np.uint8), tf.constant([seed, 1]),
        32))
    y0, x0 = int(im[0, 0, 0]), int(im[0, 0, 1])
    offsets.add((y0, x0))
    np.testing.assert_array_equal(im, big_image[y0:y0 + 32, x0:x0 + 32])
    np.testing.assert_array_equal(lab, big_y[y0:y0 + 32, x0:x0 + 32])
    np.testing.assert_array_equal(ign, big_x[y0:y0 + 32, x0:x0 + 32])
  assert len(offsets) > 1


def test_flip_flips_image_label_and_ignore_together():
  outcomes = set()
  for seed in range(16):
    image, label, ignore = (t.numpy() for t in augment.random_flip(
        _IMAGE, _LABEL, _LABEL + 1, tf.constant([seed, 5])))
    flipped = np.array_equal(image, _IMAGE[:, ::-1])
    assert flipped or np.array_equal(image, _IMAGE)
    expected = _LABEL[:, ::-1] if flipped else _LABEL
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(ignore, expected + 1)
    outcomes.add(flipped)
  assert outcomes == {True, False}
  _, _, none = augment.random_flip(_IMAGE, _LABEL, None, tf.constant([0, 0]))
  assert none is None
  # data.flip_prob: 0 never flips (e.g. digits, whose mirror image is another shape).
  for prob, want in ((0.0, _IMAGE), (1.0, _IMAGE[:, ::-1])):
    for seed in range(8):
      image, _, _ = augment.random_flip(_IMAGE, _LABEL, None, tf.constant([seed, 1]), prob)
      np.testing.assert_array_equal(image.numpy(), want)


def test_strong_ops_change_colours_not_geometry():
  # A grey background with two coloured squares. Without blur every strong op is a map of
  # the pixel's colour (contrast uses the image mean, still one map for all pixels), so
  # the regions stay intact; with blur the mass stays centred on the squares.
  image = np.full((40, 40, 3), 100, np.uint8)
  image[8:16, 20:28] = (230, 40, 40)
  image[25:33, 5:13] = (30, 200, 90)
  regions = np.zeros((40, 40), np.int32)
  regions[8:16, 20:28] = 1
  regions[25:33, 5:13] = 2
  no_blur = dict(_STRONG, color_jitter_prob=1.0, blur_prob=0.0)
  changed = 0
  for seed in range(8):
    out = augment.strong_augment(image, tf.constant([seed, 0]), **no_blur).numpy()
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= -1e-3 and out.max() <= 255.0 + 1e-3
    for r in range(3):
      pixels = out[regions == r]
      np.testing.assert_allclose(pixels, np.broadcast_to(pixels[0], pixels.shape), atol=1e-3)
    changed += not np.allclose(out, image, atol=1.0)
  assert changed == 8

  square = np.zeros((40, 40, 3), np.uint8)
  square[10:16, 22:28] = 255
  blur_always = dict(_STRONG, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=1.0)
  for seed in range(4):
    out = augment.strong_augment(square, tf.constant([seed, 1]), **blur_always).numpy()
    mass = out.sum(-1)
    assert mass.sum() == pytest.approx(square.sum(), rel=1e-4)
    yy, xx = np.mgrid[0:40, 0:40]
    assert (yy * mass).sum() / mass.sum() == pytest.approx(12.5, abs=1e-3)
    assert (xx * mass).sum() / mass.sum() == pytest.approx(24.5, abs=1e-3)


def test_grayscale_and_color_jitter_match_torchvision_definitions():
  x = np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8)
  gray = augment.grayscale(x).numpy()
  np.testing.assert_allclose(gray[0, 0], 0.2989 * 255.0, rtol=1e-6)
  np.testing.assert_allclose(gray[0, 1], 0.587 * 255.0, rtol=1e-6)
  # Only brightness (other strengths 0): a uniform factor in [0.5, 1.5], clipped.
  mid = np.full((4, 4, 3), 100, np.uint8)
  out = augment.color_jitter(mid, tf.constant([1, 2]), 0.5, 0.0, 0.0, 0.0).numpy()
  factor = out[0, 0, 0] / 100.0
  assert 0.5 <= factor <= 1.5
  np.testing.assert_allclose(out, 100.0 * factor, rtol=1e-5)


def test_normalize_known_values():
  image = np.array([[MEAN, np.add(MEAN, STD), (0.0, 0.0, 0.0)]], np.float32)
  out = augment.normalize(image, MEAN, STD).numpy()
  np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)
  np.testing.assert_allclose(out[0, 1], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[0, 2], -np.array(MEAN) / np.array(STD), rtol=1e-6)
  assert augment.normalize(np.zeros((2, 2, 3), np.uint8), MEAN, STD).dtype == tf.float32


# --- train batches ------------------------------------------------------------------------


def test_train_batch_shapes_dtypes_and_values(config):
  batch = next(pipeline.train_batches(config, local_device_count=2))
  expected = {
      "labeled_image": ((2, 2, 32, 32, 3), np.float32),
      "labeled_label": ((2, 2, 32, 32), np.int32),
      "unlabeled_weak": ((2, 3, 32, 32, 3), np.float32),
      "unlabeled_strong": ((2, 3, 32, 32, 3), np.float32),
      "unlabeled_ignore": ((2, 3, 32, 32), np.int32),
  }
  assert set(batch) == set(expected)
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape, key
    assert batch[key].dtype == dtype, key
  assert set(np.unique(batch["labeled_label"])) <= set(range(11)) | {255}
  assert set(np.unique(batch["unlabeled_ignore"])) <= {0, 255}
  assert not np.array_equal(batch["unlabeled_weak"], batch["unlabeled_strong"])


def test_padding_is_marked_in_labels_and_ignore(config):
  c = config.copy_and_resolve_references()
  c.data.scale_range = (0.3, 0.6)  # long side at most 28 < crop 32: always padded
  batch = next(pipeline.train_batches(c, local_device_count=1))
  zero = (0.0 - np.array(MEAN)) / np.array(STD)
  for image, mask in ((batch["labeled_image"], batch["labeled_label"] == 255),
                      (batch["unlabeled_weak"], batch["unlabeled_ignore"] == 255)):
    assert mask.all(axis=(2, 3)).sum() == 0 and mask.any(axis=(2, 3)).all()
    np.testing.assert_allclose(image[mask], np.broadcast_to(zero, image[mask].shape),
                               rtol=1e-6)
    assert not np.allclose(image[~mask][:, 0], zero[0])


def test_all_labeled_demo_labels_the_unlabeled_scenes_too(config):
  """The fully supervised upper bound of the demo: labeled = labeled + unlabeled scenes."""
  upper = config.copy_and_resolve_references()
  upper.data.all_labeled = True
  labeled, unlabeled = sources.train_sources(upper)
  assert labeled.size == config.data.demo_labeled + config.data.demo_unlabeled
  assert unlabeled.size == config.data.demo_unlabeled
  images = np.concatenate([sources.demo_arrays(config, "labeled")[0],
                           sources.demo_arrays(config, "unlabeled")[0]])
  got = np.stack([labeled.load(tf.constant(i))[0].numpy() for i in (0, labeled.size - 1)])
  np.testing.assert_array_equal(got, images[[0, -1]])


def test_train_batches_are_deterministic(config):
  a = _take(pipeline.train_batches(config, local_device_count=2), 4)
  b = _take(pipeline.train_batches(config, local_device_count=2), 4)
  _assert_batches_equal(a, b)
  other = config.copy_and_resolve_references()
  other.seed = 1
  c = next(pipeline.train_batches(other, local_device_count=2))
  assert not np.array_equal(a[0]["unlabeled_weak"], c["unlabeled_weak"])


def test_resume_gives_exactly_the_same_batches(config):
  # 7 steps cross two epoch boundaries (3 steps per epoch).
  from_zero = _take(pipeline.train_batches(config, local_device_count=2), 7)
  resumed = _take(pipeline.train_batches(config, start_step=4, local_device_count=2), 3)
  _assert_batches_equal(from_zero[4:], resumed)


def test_processes_split_the_same_global_batch(config):
  one = _take(pipeline.train_batches(config, local_device_count=4), 4)
  halves = [_take(pipeline.train_batches(config, process_index=p, process_count=2,
                                         local_device_count=2), 4) for p in range(2)]
  joined = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves)]
  _assert_batches_equal(one, joined)
  assert not np.array_equal(halves[0][0]["labeled_image"], halves[1][0]["labeled_image"])


def test_epoch_order_cycles_and_reshuffles():
  order = pipeline._epoch_order(0, 1, 0, 20, 45)  # pylint: disable=protected-access
  assert len(order) == 45
  for start in (0, 20):
    assert sorted(order[start:start + 20]) == list(range(20))
  assert not np.array_equal(order[:20], order[20:40])
  next_epoch = pipeline._epoch_order(0, 1, 1, 20, 45)  # pylint: disable=protected-access
  assert not np.array_equal(order, next_epoch)


# --- eval batches -------------------------------------------------------------------------


def _eval_ids(batches, images):
  """Source index of each valid example, found by content."""
  flat = images.reshape(len(images), -1)
  ids = []
  for batch in batches:
    for image, valid in zip(batch["image"].reshape(-1, flat.shape[1]),
                            batch["valid"].reshape(-1)):
      if valid:
        match = np.flatnonzero(np.all(np.isclose(flat, image, atol=1e-5), axis=1))
        assert len(match) == 1
        ids.append(int(match[0]))
  return ids


def test_eval_covers_every_example_once(config):
  images, labels = sources.demo_arrays(config, "validation")
  normalised = (images.astype(np.float32) - np.array(MEAN, np.float32)) / np.array(
      STD, np.float32)
  assert pipeline.num_eval_examples(config, "validation") == 11
  batches = list(pipeline.eval_batches(config, local_device_count=2))
  assert len(batches) == 3  # 11 examples, 4 per batch: padded, not dropped
  for b in batches:
    assert b["image"].shape == (2, 2, 48, 48, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (2, 2, 48, 48) and b["label"].dtype == np.int32
    assert b["valid"].shape == (2, 2) and b["valid"].dtype == bool
  assert sum(int(b["valid"].sum()) for b in batches) == 11
  assert _eval_ids(batches, normalised) == list(range(11))
  np.testing.assert_array_equal(batches[0]["label"].reshape(-1, 48, 48), labels[:4])

  per_process = [list(pipeline.eval_batches(config, process_index=p, process_count=2,
                                            local_device_count=2)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 2
  ids = _eval_ids(per_process[0], normalised) + _eval_ids(per_process[1], normalised)
  assert sorted(ids) == list(range(11))


def test_eval_scale_scores_validation_at_the_rescaled_resolution(config):
  """data.eval_scale: 48 -> 24 pixels a side; labels by nearest neighbour, which at a
  factor of 1/2 (half-pixel centres) reads source pixel 2i + 1; images by the bilinear
  rescale of training, antialiased: a triangle filter widened by 2 (PIL's BILINEAR),
  centred on source 2i + 0.5, weights renormalised at the borders."""
  images, labels = sources.demo_arrays(config, "validation")
  c = config.copy_and_resolve_references()
  c.data.eval_scale = 0.5
  batch = next(iter(pipeline.eval_batches(c, local_device_count=1)))
  assert batch["image"].shape == (1, 2, 24, 24, 3) and batch["label"].shape == (1, 2, 24, 24)
  np.testing.assert_array_equal(batch["label"][0], labels[:2, 1::2, 1::2])
  j = np.arange(48)
  taps = np.maximum(0.0, 1.0 - np.abs(j[None, :] - (2 * np.arange(24)[:, None] + 0.5)) / 2)
  taps /= taps.sum(axis=1, keepdims=True)
  x = np.einsum("ih,nhwc,jw->nijc", taps, images[:2].astype(np.float64), taps)
  want = (x - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(batch["image"][0], want, atol=1e-3)


def test_eval_positions_pad_the_last_batch():
  ids, valid = pipeline.eval_positions(5, 2, 1, 2)
  # Global batches of 4: process 1 takes positions 2, 3 and 6, 7 (padding).
  np.testing.assert_array_equal(ids, [2, 3, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False, False])


def test_unknown_dataset_and_bad_settings_raise_clear_errors(config):
  c = config.copy_and_resolve_references()
  c.data.name = "kitti"
  with pytest.raises(pipeline.DatasetError, match="not a dataset"):
    pipeline.train_batches(c)
  c.data.name = "demo"
  c.data.shuffle_buffer = 100
  with pytest.raises(pipeline.DatasetError, match="shuffle_buffer"):
    pipeline.train_batches(c)
  with pytest.raises(pipeline.DatasetError, match="process_index"):
    pipeline.train_batches(config, process_index=2, process_count=2)
  with pytest.raises(pipeline.DatasetError, match="split"):
    pipeline.eval_batches(config, "test")


def test_labels_outside_the_classes_stop_the_pipeline_naming_the_example(config):
  """Where labels enter: a value that is neither a class id nor the ignore label."""
  c = config.copy_and_resolve_references()
  c.data.num_classes = 5   # the demo's digits 5-9 are labels 6-10
  with pytest.raises(errors.LabelError, match=r"The label map of demo labeled scene \d+ "
                     r"holds the value\(s\) (\d+, )*\d+, which are neither a class id "
                     r"\(0 to 4, data.num_classes=5\) nor the ignore label \(255\)"):
    _take(pipeline.train_batches(c, local_device_count=1), 3)
  with pytest.raises(errors.LabelError, match="demo validation scene"):
    list(pipeline.eval_batches(c, local_device_count=1))
  # Every label of the demo fits its 11 classes.
  assert len(list(pipeline.eval_batches(config, local_device_count=1))) > 0


def test_closed_batches_stop_and_running_out_closes(config):
  batches = pipeline.train_batches(config, local_device_count=1)
  next(batches)
  batches.close()
  with pytest.raises(StopIteration):
    next(batches)
  with pipeline.eval_batches(config, local_device_count=1) as evaluation:
    assert list(evaluation) and not list(evaluation)
