"""CSS's prototype pieces against NumPy written from the spec (css-algorithm.md
sections 3-4): representation-space labels, the mix rule, the prototype EMA over
devices, ReCo's weighted CE, the ramp-down."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.methods import prototypes as pt


def _np_cos(rep, protos):
  r = rep / np.linalg.norm(rep, axis=-1, keepdims=True)
  out = np.zeros(rep.shape[:-1] + (protos.shape[0],))
  for c, p in enumerate(protos):
    n = np.linalg.norm(p)
    if n > 0:
      out[..., c] = r @ (p / n)
  return out


def test_representation_labels_are_the_softmax_of_cosines_zero_prototypes_at_zero():
  rs = np.random.RandomState(0)
  rep = rs.randn(2, 3, 4, 6)
  protos = rs.randn(5, 6) * 3
  protos[2] = 0.0                                 # never updated: similarity 0
  s = _np_cos(rep, protos)
  e = np.exp(s / 0.5 - (s / 0.5).max(-1, keepdims=True))
  probs = e / e.sum(-1, keepdims=True)
  conf, label = pt.representation_labels(jnp.asarray(rep, jnp.float32),
                                         jnp.asarray(protos, jnp.float32), 0.5)
  np.testing.assert_allclose(conf, probs.max(-1), rtol=1e-5)
  np.testing.assert_array_equal(label, probs.argmax(-1))
  np.testing.assert_allclose(pt.prototype_similarity(jnp.asarray(rep, jnp.float32),
                                                     jnp.asarray(protos, jnp.float32))[..., 2],
                             0.0)


def test_mix_keeps_agreeing_pixels_only():
  logit = np.array([[0, 1, 2], [3, 3, 1]])
  rep = np.array([[0, 2, 2], [1, 3, 1]])
  np.testing.assert_array_equal(pt.mix_labels(logit, rep, 255),
                                [[0, 255, 2], [255, 3, 1]])


def _np_update(protos, rep, labels, valid, alpha):
  out = protos.copy()
  for c in range(protos.shape[0]):
    members = rep[(labels == c) & valid]
    if len(members) == 0:
      continue
    mean = members.mean(0)
    out[c] = mean if np.all(protos[c] == 0) else alpha * protos[c] + (1 - alpha) * mean
  return out


def test_prototype_ema_first_copies_then_moves_and_two_devices_agree_with_one():
  rs = np.random.RandomState(1)
  k, d = 4, 5
  rep = rs.randn(2, 3, 4, 4, d).astype(np.float32)        # (devices, B, h, w, D)
  labels = rs.randint(0, 3, (2, 3, 4, 4))                 # class 3 never present
  valid = rs.rand(2, 3, 4, 4) > 0.3
  protos = np.zeros((k, d), np.float32)
  protos[1] = rs.randn(d)                                 # already set: EMA
  protos[3] = rs.randn(d)                                 # absent: kept
  want = _np_update(protos, rep.reshape(-1, d), labels.reshape(-1), valid.reshape(-1), 0.99)
  np.testing.assert_allclose(want[0], rep.reshape(-1, d)[(labels.reshape(-1) == 0)
                                                          & valid.reshape(-1)].mean(0))
  two = jax.pmap(lambda r, l, v: pt.update_prototypes(jnp.asarray(protos), r, l, v, 0.99,
                                                      axis_name="i"),
                 axis_name="i", devices=jax.local_devices()[:2])(rep, labels, valid)
  np.testing.assert_allclose(two[0], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(two[0], two[1])           # every device the same
  one = pt.update_prototypes(jnp.asarray(protos), rep, labels, valid, 0.99)
  np.testing.assert_allclose(one, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(one[3], protos[3])


def test_reco_weighted_ce_weights_each_image_by_its_confident_share():
  rs = np.random.RandomState(2)
  logits = rs.randn(2, 4, 5, 3)
  labels = rs.randint(0, 3, (2, 4, 5))
  labels[0, 0] = 255
  conf = rs.rand(2, 4, 5)
  total, count = pt.reco_weighted_ce_sum(jnp.asarray(logits, jnp.float32), labels,
                                         jnp.asarray(conf, jnp.float32), 0.6)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want_sum, want_count = 0.0, 0
  for b in range(2):
    valid = labels[b] != 255
    w = np.sum(valid & (conf[b] >= 0.6)) / np.sum(valid)
    nll = -np.take_along_axis(lp[b], np.where(valid, labels[b], 0)[..., None], -1)[..., 0]
    want_sum += np.sum(w * nll[valid])
    want_count += np.sum(valid)
  assert float(total) == pytest.approx(want_sum, rel=1e-5)
  assert float(count) == want_count


@pytest.mark.parametrize("epoch", [0, 1, 50, 199, 200, 350])
def test_rampdown(epoch):
  want = np.exp(-5 * (epoch / 200) ** 2) if epoch < 200 else 0.0
  assert float(pt.rampdown(epoch)) == pytest.approx(want, rel=1e-6, abs=1e-12)
