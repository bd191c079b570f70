"""Evaluation under pmap: padded batches, psum over devices, every image counted once."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.training import evaluate as evaluation
from ddfp_jax.training import metrics
from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.density import FeatureDensity
from ddfp_jax.models.resize import resize_bilinear
from ddfp_jax.methods.ddfp import flowgmm_head

K = 5
NUM_IMAGES = 10
PER_DEVICE = 2
SIZE = 33


@pytest.fixture(scope="module")
def setup():
  """Tiny DeepLabV3+ and density, their variables, and a 10-image validation set."""
  rng = np.random.RandomState(0)
  images = rng.randn(NUM_IMAGES, SIZE, SIZE, 3).astype(np.float32)
  # Ignored (255) and out-of-range (7) labels mixed in; neither may be counted.
  labels = rng.choice(np.array([0, 1, 2, 3, 4, 7, 255]), size=(NUM_IMAGES, SIZE, SIZE))
  labels = labels.astype(np.int32)
  model = DeepLabV3Plus(num_classes=K, depth=18, width=1 / 16)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), images[:PER_DEVICE])
  # The density only needs the feature width from v.
  v = jax.eval_shape(lambda x: model.apply(
      variables, model.apply(variables, x, False, method="encode"), False,
      method="features"), images[:1])
  density = FeatureDensity(num_classes=K, num_blocks=2, hidden=16)
  density_params = jax.jit(density.init)(jax.random.key(1), jnp.zeros(v.shape))
  return model, variables, density, density_params, images, labels


def _reference(model, variables, density, density_params, images, labels):
  """Single-device confusion matrices, computed two examples at a time as on a device."""
  @jax.jit
  def predict(x):
    u = model.apply(variables, x, False, method="encode")
    v = model.apply(variables, u, False, method="features")
    logits = model.apply(variables, v, method="classify")
    flow_logits = density.apply(density_params, v, method="class_logits")
    up = lambda l: jnp.argmax(resize_bilinear(l, (SIZE, SIZE)), axis=-1)
    return up(logits), up(flow_logits)

  preds = [predict(images[i:i + PER_DEVICE]) for i in range(0, NUM_IMAGES, PER_DEVICE)]
  pred = np.concatenate([np.asarray(p[0]) for p in preds])
  flow_pred = np.concatenate([np.asarray(p[1]) for p in preds])
  conf = np.zeros((K, K), np.int64)
  flow_conf = np.zeros((K, K), np.int64)
  keep = labels < K
  np.add.at(conf, (labels[keep], pred[keep]), 1)
  np.add.at(flow_conf, (labels[keep], flow_pred[keep]), 1)
  return conf, flow_conf


def test_pmap_evaluation_counts_every_image_once(setup):
  model, variables, density, density_params, images, labels = setup
  devices = jax.local_device_count()
  assert devices == 4
  batches = list(evaluation.padded_batches(images, labels, devices, PER_DEVICE))
  # 10 images on 4 x 2 slots: two steps, the second with 2 real and 6 padding examples.
  assert len(batches) == 2 and batches[1]["valid"].sum() == 2
  # Padding labels are real classes here, so a broken mask would show up in the counts.
  batches[1]["label"][~batches[1]["valid"]] = 1

  step = evaluation.make_eval_step(model, num_classes=K, heads={"flow": flowgmm_head(density)},
                                   axis_name="batch")
  p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0))
  results = evaluation.evaluate(p_step, variables, batches,
                                head_state={"flow_params": density_params})

  conf, flow_conf = _reference(model, variables, density, density_params, images, labels)
  assert results["confusion"].dtype == np.int64
  np.testing.assert_array_equal(results["confusion"], conf)
  np.testing.assert_array_equal(results["flow_confusion"], flow_conf)
  counted = int(((labels >= 0) & (labels < K)).sum())
  assert results["confusion"].sum() == counted
  assert results["flow_confusion"].sum() == counted

  miou, per_class = metrics.iou_from_confusion(conf)
  assert results["miou"] == miou
  np.testing.assert_array_equal(results["per_class_iou"], per_class)
  assert results["pixel_accuracy"] == metrics.pixel_accuracy(conf)
  assert results["flow_miou"] == metrics.iou_from_confusion(flow_conf)[0]
  assert results["flow_per_class_iou"].shape == (K,)


def test_without_density_params_only_the_model_is_scored(setup):
  model, variables, density, _, images, labels = setup
  step = evaluation.make_eval_step(model, num_classes=K, heads={"flow": flowgmm_head(density)})
  p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0))
  batches = evaluation.padded_batches(images, labels, jax.local_device_count(), 3)
  results = evaluation.evaluate(p_step, variables, batches)
  assert set(results) == {"miou", "per_class_iou", "pixel_accuracy", "confusion"}
  assert results["confusion"].sum() == int(((labels >= 0) & (labels < K)).sum())


def test_eval_step_without_axis_runs_unmapped(setup):
  model, variables, _, _, images, labels = setup
  step = jax.jit(evaluation.make_eval_step(model, num_classes=K, axis_name=None))
  valid = np.array([True, False])
  out = step(variables, None, {"image": images[:2], "label": labels[:2], "valid": valid})
  assert set(out) == {"confusion"}
  assert int(out["confusion"].sum()) == int(((labels[0] >= 0) & (labels[0] < K)).sum())




def test_multi_domain_evaluation_reads_each_domain_from_its_head_with_none_as_fn():
  """USSS: an image of domain d is scored by head d (K_d + 1 channels); a pixel predicted
  as the extra "None" channel is a false negative of its true class, nothing else."""
  from ddfp_jax.models import multi_domain as md   # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(1)
  images = rng.randn(6, 24, 24, 3).astype(np.float32)
  classes = (3, 4)
  model = md.MultiDomainSegmenter(md.build_encoder("drn", drn_depth=22, width=1 / 8),
                                  num_classes=classes, embedding_dim=8, none_class=True)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0),
                                                                   images[:2])

  @functools.partial(jax.jit, static_argnums=1)
  def logits_of(x, d, params):
    f = model.apply({**variables, "params": params}, x, False, method="encode")
    return resize_bilinear(model.apply({**variables, "params": params}, f, d,
                                       method="classify"), (24, 24))

  for d, k in enumerate(classes):
    # Shift the None channel's bias so that it wins on about a third of the pixels.
    logits = np.asarray(logits_of(images, d, variables["params"]))
    margin = logits[..., k] - logits[..., :k].max(-1)
    params = jax.tree.map(np.array, variables["params"])
    params[f"head_{d}"]["bias"][k] -= np.quantile(margin, 2 / 3)
    pred = np.argmax(np.asarray(logits_of(images, d, params)), -1)
    assert 0.2 < np.mean(pred == k) < 0.5
    labels = rng.choice(np.r_[np.arange(k), 255], size=pred.shape).astype(np.int32)
    keep = labels != 255
    conf = np.zeros((k, k + 1), np.int64)
    np.add.at(conf, (labels[keep], pred[keep]), 1)
    tp = np.diag(conf[:, :k])
    want_iou = tp / (conf[:, :k].sum(0) + conf.sum(1) - tp)   # FN includes "None"

    step = evaluation.make_eval_step(model, k, axis_name="batch", domain=d,
                                     num_predictions=k + 1)
    p_step = jax.pmap(step, axis_name="batch", in_axes=(None, None, 0),
                      devices=jax.local_devices()[:2])
    out = evaluation.evaluate(p_step, {**variables, "params": params},
                              evaluation.padded_batches(images, labels, 2, 2), None)
    np.testing.assert_array_equal(out["confusion"], conf)
    np.testing.assert_allclose(out["per_class_iou"], want_iou, rtol=1e-12)
    assert out["miou"] == pytest.approx(np.mean(want_iou))
