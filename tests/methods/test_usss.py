"""USSS's method (`ddfp_jax.methods.usss`): its stages, its loss against a NumPy reference
written here from the spec (../shared usss-algorithm.md sections 3 and 5), the centroids
its collect stage sums, its config checks. The contract (compiles once per phase, 1 vs 2
devices, resume) is tests/methods/test_method_contract.py's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.config.check import ConfigError, check_config
from ddfp_jax.data.domains import domain_key
from ddfp_jax.methods import usss
from ddfp_jax.methods.interface import StepInputs
from ddfp_jax.models import builders
from ddfp_jax.training import step as train_step
from ddfp_jax.training.state import create_train_state
from method_contract import contract_batch
from tiny import tiny_config

TINY_USSS = {"usss.embedding_dim": 8, "data.num_classes": 11}


def usss_config(**overrides):
  return tiny_config(method="usss", **{**TINY_USSS, **overrides})


def test_stages_follow_the_recipe():
  config = usss_config(**{"schedule.sup_only_epochs": 3, "usss.collect_epochs": 2})
  stages = [usss.phase_at(config, s).stage for s in range(0, 10, 2)]   # one per epoch
  assert stages == ["supervised", "collect", "collect", "entropy", "entropy"]
  assert not any(usss.phase_at(config, s).semi for s in range(10))
  random = usss_config(**{"schedule.sup_only_epochs": 0, "usss.label_embeddings": "random"})
  assert {usss.phase_at(random, s).stage for s in range(6)} == {"entropy"}
  joint = usss_config(**{"usss.alpha": 0.0, "usss.beta": 0.0})
  assert {usss.phase_at(joint, s).stage for s in range(12)} == {"supervised"}


# ---- the NumPy reference ------------------------------------------------------------------

def np_resize_bilinear(x, size):
  """align_corners=True bilinear resize of (N, h, w, C), written from its definition."""
  for axis, out in ((1, size[0]), (2, size[1])):
    n = x.shape[axis]
    if n == out:
      continue
    src = np.arange(out) * ((n - 1) / (out - 1))
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = out
    frac = (src - lo).reshape(shape)
    x = np.take(x, lo, axis) * (1 - frac) + np.take(x, hi, axis) * frac
  return x


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels, ignore=255):
  logp = np_log_softmax(np_resize_bilinear(logits, labels.shape[1:3]))
  valid = labels != ignore
  picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return -picked[valid].mean()


def np_entropy_mean(e, table, valid, size, temperature=1.0):
  scores = np.einsum("nhwd,kd->nhwk", e, table[:, 0]) / temperature
  logp = np_log_softmax(np_resize_bilinear(scores, size))
  h = -(np.exp(logp) * logp).sum(-1)
  return h[valid].mean()


@pytest.fixture(scope="module")
def setting():
  config = usss_config(**{"schedule.sup_only_epochs": 1, "usss.alpha": 0.7,
                          "usss.beta": 1.3, "usss.temperature": 2.0,
                          "data.labeled_per_device": 2, "data.unlabeled_per_device": 3})
  state = create_train_state(config, jax.random.key(0))
  batch = contract_batch(config, 2, 3, 1, seed=5)
  return config, state, batch


def forward(config, variables, image, domain):
  """(logits of `domain`, embeddings) of the train-mode model, float64 NumPy."""
  model = builders.build_model(config)
  f, _ = model.apply(variables, jnp.asarray(image), True, method="encode",
                     mutable=["batch_stats"])
  logits = model.apply(variables, f, domain, method="classify")
  e = model.apply(variables, f, method="embed")
  return np.asarray(logits, np.float64), np.asarray(e, np.float64)


def pmapped_loss(config, state, batch, phase):
  tools = train_step.make_tools(config)
  loss_fn = usss.make_loss(tools)

  def run(b):
    inputs = StepInputs(state, b, phase, None, None)
    loss, (_, metrics, *outputs) = loss_fn(state.params, inputs, jax.random.key(1))
    return loss, metrics, outputs
  return jax.pmap(run, axis_name=train_step.AXIS)(batch)


def test_entropy_stage_loss_is_the_per_domain_sum_of_the_spec(setting):
  config, state, batch = setting
  state = state.replace(extra=dict(state.extra, counts={
      d: jnp.zeros_like(c) for d, c in state.extra["counts"].items()}))   # fixed rows
  loss, metrics, _ = pmapped_loss(config, state, batch, usss.Phase(False, "entropy"))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  names = usss.domain_names(config)
  tables = {d: np.asarray(t, np.float64) for d, t in state.extra["label_embeddings"].items()}
  want = 0.0
  for i, d in enumerate(names):
    key = lambda k: domain_key(d, k)
    logits, _ = forward(config, variables, batch[key("labeled_image")][0], i)
    sup = np_ce(logits, batch[key("labeled_label")][0])
    _, e = forward(config, variables, batch[key("unlabeled_weak")][0], i)
    valid = batch[key("unlabeled_ignore")][0] != 255
    size = valid.shape[1:3]
    within = np_entropy_mean(e, tables[d], valid, size)
    cross = np.mean([np_entropy_mean(e, tables[o], valid, size, temperature=2.0)
                     for o in names if o != d])
    assert 0.0 <= within <= np.log(usss.num_classes(config)[i])
    np.testing.assert_allclose(float(metrics[f"loss_sup/{d}"][0]), sup, rtol=1e-5)
    np.testing.assert_allclose(float(metrics[f"loss_within/{d}"][0]), within, rtol=1e-5)
    np.testing.assert_allclose(float(metrics[f"loss_cross/{d}"][0]), cross, rtol=1e-5)
    want += sup + 0.7 * cross + 1.3 * within
  np.testing.assert_allclose(float(loss[0]), want, rtol=1e-5)


def test_collect_stage_sums_labeled_embeddings_per_class_and_scores_their_means(setting):
  config, state, batch = setting
  step = train_step.pmap_train_step(config, devices=jax.local_devices()[:1], max_traces=1)
  new, metrics = step(train_step.replicate(state, jax.local_devices()[:1]), batch,
                      usss.Phase(False, "collect"))
  assert int(metrics["nonfinite"]) == 0
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  seen = []
  for i, d in enumerate(usss.domain_names(config)):
    k = usss.num_classes(config)[i]
    _, e = forward(config, variables, batch[domain_key(d, "labeled_image")][0], i)
    label = batch[domain_key(d, "labeled_label")][0]
    rows = np.floor(np.arange(e.shape[1]) * (label.shape[1] / e.shape[1])).astype(int)
    small = label[:, rows][:, :, rows]                     # nearest, floor(i * in / out)
    sums = np.stack([e[small == c].sum(0) for c in range(k)])
    counts = np.asarray([(small == c).sum() for c in range(k)])
    np.testing.assert_allclose(np.asarray(new.extra["sums"][d]), sums, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(new.extra["counts"][d]), counts)
    table = np.asarray(usss.current_embeddings(new.extra)[d])[:, 0]
    for c in range(k):
      expected = (sums[c] / np.linalg.norm(sums[c]) if counts[c] else
                  np.asarray(state.extra["label_embeddings"][d])[c, 0])
      np.testing.assert_allclose(table[c], expected, rtol=1e-4, atol=1e-5)
    seen.append(np.mean(counts > 0))
  assert float(metrics["centroid_classes_seen"]) == pytest.approx(np.mean(seen))


# ---- several centroids per class: k-means over the collect epochs ------------------------

KMEANS = {"schedule.sup_only_epochs": 4, "usss.collect_epochs": 3, "usss.per_class": 2,
          "steps_per_epoch": 2}


def collect_steps(config, extra, inputs):
  """`make_extra_update` over the collect steps, one device: inputs = [(step, outputs)]."""
  tools = train_step.make_tools(config)
  update = usss.make_extra_update(tools)
  phase = usss.Phase(False, "collect")

  def run(extra, step, outputs):
    state = type("State", (), {"step": step})()     # all the update reads of the state
    return update(extra, StepInputs(state, None, phase, None, None, outputs), None)
  run = jax.pmap(run, axis_name=train_step.AXIS)
  extra = jax.tree.map(lambda x: x[None], extra)
  for step, outputs in inputs:
    assert usss.phase_at(config, step).stage == "collect"
    extra, _ = run(extra, jnp.asarray([step]), jax.tree.map(lambda x: x[None], outputs))
  return jax.tree.map(lambda x: np.asarray(x[0]), extra)


def np_streaming_kmeans(epochs, k, rows):
  """The collect stage's k-means from its description, per class: epoch 0 the mean and the
  RMS distance s to it; seeds mean + s r_j; each later epoch assigns to the nearest centre
  of the previous epoch's (cluster means; an empty cluster keeps its centre) and sums."""
  m, dim = rows.shape[1:]
  centres = np.zeros((k, m, dim))
  sums, counts = np.zeros((k, m, dim)), np.zeros((k, m))
  previous = None
  for t, pixels in enumerate(epochs):           # pixels: [(e (P, D), labels (P,))]
    e = np.concatenate([p[0] for p in pixels]).astype(np.float64)
    y = np.concatenate([p[1] for p in pixels])
    if t == 1:
      for c in range(k):
        members = previous[0][previous[1] == c]
        mean = members.mean(0) if len(members) else np.zeros(dim)
        s = np.sqrt(np.mean(np.sum((members - mean) ** 2, -1))) if len(members) else 0.0
        centres[c] = mean + s * rows[c]
    elif t > 1:
      centres = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None],
                         centres)
    sums, counts = np.zeros((k, m, dim)), np.zeros((k, m))
    for c in range(k):
      for point in e[y == c]:
        j = 0 if t == 0 else int(np.argmin(((centres[c] - point) ** 2).sum(-1)))
        sums[c, j] += point
        counts[c, j] += 1
    previous = e, y
  return sums, counts, centres


def _collect_inputs(config, draw):
  """(step, outputs) of every collect step, pixels from draw(rs, domain, k) -> (e, y)."""
  first = (config.schedule.sup_only_epochs - config.usss.collect_epochs) * config.steps_per_epoch
  last = config.schedule.sup_only_epochs * config.steps_per_epoch
  rs = np.random.RandomState(3)
  out = []
  for step in range(first, last):
    outputs = {}
    for d, k in zip(usss.domain_names(config), usss.num_classes(config)):
      e, y = draw(rs, d, k)
      outputs[d] = (jnp.asarray(e.reshape(2, 3, 4, -1)), jnp.asarray(y.reshape(2, 3, 4)))
    out.append((step, outputs))
  return out


def test_collect_epochs_run_kmeans_as_the_numpy_reference():
  config = usss_config(**KMEANS)
  state = create_train_state(config, jax.random.key(0))

  def draw(rs, d, k):
    y = rs.randint(0, k + 2, size=24)             # classes, some unlabeled (>= k), one unseen
    y = np.where(y == 1, k + 1, y)
    y = np.where(y >= k, 255, y)
    return rs.randn(24, 8).astype(np.float32) + y[:, None] % 3, y
  inputs = _collect_inputs(config, draw)
  extra = collect_steps(config, state.extra, inputs)
  spe = config.steps_per_epoch
  for d, k in zip(usss.domain_names(config), usss.num_classes(config)):
    rows = np.asarray(state.extra["label_embeddings"][d], np.float64)
    epochs = [[(np.asarray(o[d][0]).reshape(-1, 8), np.asarray(o[d][1]).reshape(-1))
               for _, o in inputs[t * spe:(t + 1) * spe]] for t in range(3)]
    sums, counts, centres = np_streaming_kmeans(epochs, k, rows)
    np.testing.assert_array_equal(extra["counts"][d], counts)
    np.testing.assert_allclose(extra["sums"][d], sums, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(extra["centres"][d], centres, rtol=1e-4, atol=1e-4)
    table = np.asarray(usss.current_embeddings(extra)[d])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    for c in range(k):
      for j in range(2):
        want = (unit(sums[c, j]) if counts[c, j] else
                unit(centres[c, j]) if np.any(centres[c, j]) else rows[c, j])
        np.testing.assert_allclose(table[c, j], want, rtol=1e-4, atol=1e-5)
    assert not np.any(counts[1]) and np.allclose(table[1], rows[1], atol=1e-6)   # unseen


def test_kmeans_finds_two_clusters_within_a_class():
  """Each class's pixels from two tight blobs: the two centroids are the blobs'
  directions (in some order), whatever the seeds."""
  config = usss_config(**KMEANS)
  state = create_train_state(config, jax.random.key(0))
  rs = np.random.RandomState(0)
  blobs = {d: rs.randn(k, 2, 8) * 3 for d, k in zip(usss.domain_names(config),
                                                     usss.num_classes(config))}

  def draw(rs, d, k):
    y = rs.randint(0, k, size=24)
    which = rs.randint(0, 2, size=24)
    return (blobs[d][y, which] + 0.05 * rs.randn(24, 8)).astype(np.float32), y
  extra = collect_steps(config, state.extra, _collect_inputs(config, draw))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  for d, blob in blobs.items():
    table = np.asarray(usss.current_embeddings(extra)[d])
    seen = extra["counts"][d].sum(-1) > 0
    for c in np.flatnonzero(seen):
      want = unit(blob[c])
      error = min(np.abs(table[c] - want).max(), np.abs(table[c] - want[::-1]).max())
      assert error < 0.05, (d, c, error)


def test_joint_training_reads_no_unlabeled_image():
  config = usss_config(**{"usss.alpha": 0.0, "usss.beta": 0.0})
  state = create_train_state(config, jax.random.key(0))
  batch = {k: v for k, v in contract_batch(config, 2, 2, 1).items() if "labeled_" in k
           and "unlabeled" not in k}
  loss, metrics, _ = pmapped_loss(config, state, batch, usss.phase_at(config, 0))
  assert np.isfinite(float(loss[0])) and "loss_within/day" not in metrics


@pytest.mark.parametrize("overrides, expected", [
    ({"usss.domains": "day"}, "needs two or more domains"),
    ({"usss.domains": "day,day"}, "must name different domains"),
    ({"usss.domains": "day,nigth"}, "a misspelt domain?"),
    ({"usss.collect_epochs": 2}, "1 <= collect_epochs <= sup_only_epochs"),
    ({"usss.label_embeddings": "file"}, "usss.embedding_file"),
    ({"usss.per_class": 3}, "set usss.collect_epochs to 2 or more"),
    ({"usss.alpha": -1.0}, "0 or more"),
    ({"usss.encoder": "vgg"}, "'usss.encoder' is 'vgg'"),
    ({"train.num_images": 2}, "train.num_images=0"),
])
def test_bad_settings_are_refused_in_one_paragraph(overrides, expected):
  config = tiny_config(method="usss", **{"data.num_classes": 11, **overrides})
  with pytest.raises(ConfigError) as info:
    check_config(config)
  assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_domains_data_settings_are_checked_like_the_runs():
  config = tiny_config(method="usss", **{"data.num_classes": 11})
  config.usss.domain_data.night.num_classes = 7
  with pytest.raises(ConfigError, match="domain 'night'.*night' domain has 6 classes"):
    check_config(config)
  config.usss.domain_data.night.num_classes = 6
  with config.usss.domain_data.night.unlocked():
    config.usss.domain_data.night.crop_sise = 32
  with pytest.raises(ConfigError, match="'crop_sise', which config.data does not have"):
    check_config(config)
