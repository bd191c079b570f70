"""DGCL's pieces against references written here from the spec (NumPy, PyTorch): k-NN
density, the entropy-quantile filter, random member selection, the contrastive loss and
its gradient, and the class-wise memory's FIFO semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ddfp_jax.methods import class_memory
from ddfp_jax.methods.density_contrast import (
    ContrastConfig, contrastive_loss, entropy_filter, knn_density, masked_quantile,
    random_members)

KS = (2, 3, 5)


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_density(f, memory, ks=KS):
  """The spec's DEN: mean over k of the mean of the k largest cosine similarities."""
  s = _normalize(f) @ _normalize(memory).T
  s = -np.sort(-s, axis=1)
  return np.mean([s[:, :k].mean(axis=1) for k in ks], axis=0)


def test_knn_density_is_the_brute_force_one_over_the_filled_rows():
  rs = np.random.RandomState(0)
  f, memory = rs.randn(7, 6), rs.randn(12, 6)
  filled = np.arange(12) < 9     # rows 9.. are empty slots
  got = knn_density(jnp.asarray(f), jnp.asarray(memory), jnp.asarray(filled), KS)
  np.testing.assert_allclose(np.asarray(got), np_density(f, memory[:9]), rtol=1e-5)


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_masked_quantile_is_numpys_linear_percentile(q):
  rs = np.random.RandomState(1)
  values, mask = rs.randn(5, 9), rs.rand(5, 9) > 0.4
  got = float(masked_quantile(jnp.asarray(values), jnp.asarray(mask), q))
  assert got == pytest.approx(np.percentile(values[mask], 100 * q), rel=1e-6)
  assert float(masked_quantile(jnp.asarray(values), jnp.zeros((5, 9), bool), q)) == np.inf


def test_entropy_filter_drops_the_least_certain_valid_pixels():
  rs = np.random.RandomState(2)
  logits = rs.randn(2, 6, 7, 4) * 2
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  valid = rs.rand(2, 6, 7) > 0.2
  entropy = -np.sum(probs * np.log(probs + 1e-10), axis=-1)
  threshold = np.percentile(entropy[valid], 100 - 30)
  expected = valid & (entropy < threshold)
  got = np.asarray(entropy_filter(jnp.asarray(probs, jnp.float32), jnp.asarray(valid), 30))
  np.testing.assert_array_equal(got, expected)
  assert abs(got.sum() / valid.sum() - 0.7) < 0.05


def test_random_members_are_distinct_members_up_to_k():
  member = np.zeros(50, bool)
  member[[3, 7, 8, 20, 41]] = True
  for k, expected in ((3, 3), (5, 5), (9, 5)):
    index, valid = random_members(jax.random.key(k), jnp.asarray(member), k)
    index, valid = np.asarray(index), np.asarray(valid)
    assert valid.sum() == expected and valid[:expected].all()
    assert member[index[valid]].all() and len(set(index[valid])) == expected
  # Every member is equally likely (3 of 5 drawn: 0.6 each).
  counts = np.zeros(50)
  for seed in range(400):
    index, valid = random_members(jax.random.key(seed), jnp.asarray(member), 3)
    counts[np.asarray(index)[np.asarray(valid)]] += 1
  assert np.all(np.abs(counts[member] / 400 - 0.6) < 0.1)


def torch_dgcl_loss(rep, fts, labels, memory, tau, cfg):
  """The spec's loss for inputs where no subsampling happens (every class has at most
  `max_pixels` pixels and the others at most `num_negatives`): deterministic."""
  rep = torch.tensor(rep, requires_grad=True)
  fts_t = torch.tensor(fts)
  total, used = 0.0, 0
  for c in np.unique(labels):
    if c == cfg.ignore_label or c == 0:
      continue
    members = np.flatnonzero(labels == c)
    k_a, k_p = min(cfg.num_anchors, len(members)), min(cfg.num_positives, len(members))
    if len(members) > max(cfg.ks):
      density = np_density(fts[members], memory["fts"][c], cfg.ks)
    else:
      density = np.ones(len(members))
    order = np.argsort(density, kind="stable")
    anchors = rep[members[order[:k_a]]]
    batch_pos = rep[members[order[::-1][:k_p]]].detach()
    best = np.argsort(-memory["density"][c])[:cfg.num_positives]
    memory_pos = torch.tensor(memory["rep"][c][best])
    proto = torch.cat([batch_pos, memory_pos]).mean(0, keepdim=True)
    negatives = rep[(labels != c) & (labels != cfg.ignore_label)].detach()
    keys = torch.nn.functional.normalize(torch.cat([proto, negatives]), dim=1)
    logits = torch.nn.functional.normalize(anchors, dim=1) @ keys.T / tau
    logits = logits - logits.max(1, keepdim=True).values.detach()
    log_prob = logits - torch.log(torch.exp(logits).sum(1, keepdim=True) + 1e-6)
    total = total - log_prob[:, 0].mean()
    used += 1
  loss = total / max(used, 1)
  loss.backward()
  return float(loss.detach()), rep.grad.numpy(), used


def _contrast_case(seed=3):
  rs = np.random.RandomState(seed)
  k, s, dim = 4, 16, 8
  labels = rs.choice([0, 1, 2, 3, 255], size=60, p=[0.3, 0.25, 0.25, 0.1, 0.1])
  labels[:3] = 3                  # class 3 has few pixels: density 1 for all of them
  rep, fts = rs.randn(60, dim), rs.randn(60, dim)
  memory = {"fts": rs.randn(k, s, dim), "rep": rs.randn(k, s, dim),
            "density": rs.rand(k, s), "count": np.full(k, s)}
  return rep, fts, labels, memory


@pytest.mark.parametrize("num_anchors", [200, 4])
def test_contrastive_loss_and_gradient_match_the_torch_reference(num_anchors):
  rep, fts, labels, memory = _contrast_case()
  cfg = ContrastConfig(temperature=0.5, ks=KS, num_anchors=num_anchors, num_positives=3,
                       num_negatives=512, max_pixels=10_000)
  expected, expected_grad, expected_used = torch_dgcl_loss(rep, fts, labels, memory, 0.5,
                                                           cfg)
  jmemory = {key: jnp.asarray(v) for key, v in memory.items()}
  fn = lambda r: contrastive_loss(r, jnp.asarray(fts, jnp.float32), jnp.asarray(labels),
                                  jmemory, jax.random.key(0), cfg)
  (loss, used), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(rep, jnp.float32))
  assert int(used) == expected_used == 3            # classes 1, 2, 3; not 0, not 255
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-4, atol=1e-6)


def test_class_0_is_used_when_the_release_rule_is_off():
  rep, fts, labels, memory = _contrast_case()
  cfg = ContrastConfig(ks=KS, num_positives=3, exclude_class_0=False)
  jmemory = {key: jnp.asarray(v) for key, v in memory.items()}
  _, used = contrastive_loss(jnp.asarray(rep), jnp.asarray(fts), jnp.asarray(labels),
                             jmemory, jax.random.key(0), cfg)
  assert int(used) == 4


def test_memory_is_a_fifo_of_the_newest_entries_with_insertion_densities():
  """Against the release's list semantics (prepend the new entries, keep the first
  `size`), over steps that fill, then overwrite, a class's memory. Each step inserts
  fewer pixels per class than `per_class`, so every pixel is taken."""
  size, per_class, dim, k = 10, 4, 5, 3
  rs = np.random.RandomState(4)
  memory = class_memory.init(k, size, dim, dim)
  reference = {c: {"fts": np.zeros((0, dim)), "density": np.zeros(0)} for c in range(k)}
  for step in range(6):
    labels = np.asarray([0, 0, 1, 1, 1, 2, 255, 0])[: 5 + step % 4]
    fts = rs.randn(len(labels), dim)
    key = jax.random.key(step)
    memory = class_memory.update(memory, jnp.asarray(fts, jnp.float32),
                                 jnp.asarray(fts, jnp.float32), jnp.asarray(labels), key,
                                 per_class=per_class, ks=(1, 2))
    for c in range(k):
      new = fts[labels == c]
      old = reference[c]
      density = (np_density(new, old["fts"], (1, 2)) if len(old["fts"]) > per_class
                 else np.zeros(len(new)))
      reference[c] = {"fts": np.concatenate([new, old["fts"]])[:size],
                      "density": np.concatenate([density, old["density"]])[:size]}
    for c in range(k):
      count = int(memory["count"][c])
      assert count == len(reference[c]["fts"])
      held = np.asarray(memory["fts"][c][:count])
      held_density = np.asarray(memory["density"][c][:count])
      # The same entries (as a set of rows), each with the same stored density.
      for row, dens in zip(reference[c]["fts"], reference[c]["density"]):
        match = np.flatnonzero(np.all(np.isclose(held, row, atol=1e-6), axis=1))
        assert len(match) == 1, (step, c)
        assert held_density[match[0]] == pytest.approx(dens, abs=1e-5)
  assert not bool(class_memory.is_full(memory))
  full = dict(memory, count=jnp.full((k,), size))
  assert bool(class_memory.is_full(full))


def test_classes_at_once_give_the_same_loss_as_one_at_a_time():
  rep, fts, labels, memory = _contrast_case()
  jmemory = {key: jnp.asarray(v) for key, v in memory.items()}
  losses = [contrastive_loss(jnp.asarray(rep), jnp.asarray(fts), jnp.asarray(labels),
                             jmemory, jax.random.key(5),
                             ContrastConfig(ks=KS, num_positives=3, classes_per_pass=n))[0]
            for n in (1, 4)]
  assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-6)


def test_drop_schedules_are_the_releases():
  from ddfp_jax.methods.density_contrast import drop_percents
  for p, r_u, a_t in ((0.0, 20.0, 80.0), (0.5, 10.0, 40.0), (7 / 8, 2.5, 10.0),
                      (1.0, 0.0, 10.0)):
    got = drop_percents(p)
    assert float(got[0]) == pytest.approx(r_u) and float(got[1]) == pytest.approx(a_t)


def _np_filtered(logits, valid, drop):
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  h = -np.sum(probs * np.log(probs + 1e-10), axis=-1)
  threshold = np.percentile(h[valid], 100 - drop)
  return np.where(valid & (h < threshold), probs.argmax(-1), 255)


def test_pseudo_labels_filter_by_entropy_and_mark_padding():
  """Logits at the crop's own size (no resizing), so the reference is the spec's filter
  alone: softmax, entropy, np.percentile over the valid pixels, padding ignored."""
  from ddfp_jax.methods.density_contrast import pseudo_labels
  rs = np.random.RandomState(6)
  logits = (rs.randn(2, 8, 8, 5) * 2).astype(np.float32)
  ignore = np.zeros((2, 8, 8), np.int32)
  ignore[:, :, 6:] = 255                      # padded columns
  labeled = rs.randint(0, 5, (2, 8, 8))
  out = pseudo_labels(jnp.asarray(logits), jnp.asarray(labeled), jnp.asarray(ignore), 0.25)
  valid = ignore != 255
  np.testing.assert_array_equal(np.asarray(out.self_training),
                                _np_filtered(logits, valid, 20 * 0.75))
  np.testing.assert_array_equal(np.asarray(out.contrast[:2]), labeled)
  np.testing.assert_array_equal(np.asarray(out.contrast[2:]),
                                _np_filtered(logits, valid, 80 * 0.75))
  # At the crop's size the self-training labels are upsampled, the contrast ones not.
  big = pseudo_labels(jnp.asarray(logits), jnp.asarray(np.zeros((2, 29, 29), np.int32)),
                      jnp.asarray(np.zeros((2, 29, 29), np.int32)), 0.0)
  assert big.self_training.shape == (2, 29, 29) and big.contrast.shape == (4, 8, 8)


def test_global_quantile_does_not_depend_on_the_device_split():
  from ddfp_jax.methods.density_contrast import pseudo_labels
  rs = np.random.RandomState(7)
  logits = (rs.randn(4, 6, 6, 3) * 2).astype(np.float32)
  ignore = np.where(rs.rand(4, 6, 6) < 0.2, 255, 0).astype(np.int32)
  labeled = rs.randint(0, 3, (4, 6, 6))
  whole = pseudo_labels(jnp.asarray(logits), jnp.asarray(labeled), jnp.asarray(ignore), 0.5)
  split = lambda a: a.reshape((2, 2) + a.shape[1:])
  parts = jax.pmap(lambda l, y, m: pseudo_labels(l, y, m, 0.5, axis_name="d"),
                   axis_name="d", devices=jax.local_devices()[:2])(
                       split(logits), split(labeled), split(ignore))
  np.testing.assert_array_equal(np.asarray(parts.self_training).reshape(4, 6, 6),
                                np.asarray(whole.self_training))
  unlabeled = np.asarray(parts.contrast)[:, 2:].reshape(4, 6, 6)
  np.testing.assert_array_equal(unlabeled, np.asarray(whole.contrast[4:]))
