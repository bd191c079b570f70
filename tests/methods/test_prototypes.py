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


@pytest.mark.parametrize("k", [11, 19, 21])
def test_representation_confidence_never_reaches_the_unsup_threshold(k):
  """c_rep is a softmax of cosines at tau = 0.5: at most e^2 / (e^2 + (K - 1) e^-2)
  (a pixel on its prototype, every other prototype opposite), 0.85 / 0.75 / 0.73 for
  K = 11 / 19 / 21, below delta_s = 0.8 (VOC, Cityscapes) and delta_u = 0.97: the bound
  docs/methods.md draws its conclusions from."""
  bound = np.e ** 2 / (np.e ** 2 + (k - 1) * np.e ** -2)
  d = 4
  best = np.zeros((k, d))
  best[0, 0], best[1:, 0] = 1.0, -1.0               # the extreme case: reached
  rs = np.random.RandomState(k)
  protos = np.concatenate([best[None], rs.randn(50, k, d)])
  rep = np.concatenate([np.eye(d)[:1], rs.randn(50, d)])
  conf = np.array([float(pt.representation_labels(jnp.asarray(r[None], jnp.float32),
                                                  jnp.asarray(p, jnp.float32), 0.5)[0][0])
                   for r, p in zip(rep, protos)])
  assert conf[0] == pytest.approx(bound, rel=1e-5)
  assert np.all(conf <= bound + 1e-6)
  assert bound < 0.97 and (k == 11 or bound < 0.8)


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


# --- the contrastive loss (spec section 4) ----------------------------------------------


def _contrast_case(seed=0, n=120, k=4, d=6):
  rs = np.random.RandomState(seed)
  labels = rs.randint(0, k, size=n)
  labels[labels == 3] = 2                     # class 3 absent
  valid = rs.rand(n) < 0.8
  hard = rs.rand(n) < 0.5
  rep = rs.randn(n, d)
  protos = rs.randn(k, d)
  return rep, labels, valid, hard, protos


def test_draws_follow_the_spec_distributions():
  """Anchors: uniform over class c's hard valid pixels; negative classes: softmax of
  cos(P_c, P_j) / tau over the other present classes; negative pixels: uniform within
  their class. Frequencies over many draws against those (chi-square-sized bounds)."""
  rep, labels, valid, hard, protos = _contrast_case()
  k, c = protos.shape[0], 1
  settings = pt.ContrastSettings(num_queries=4000, num_negatives=50, temperature=0.5)
  pools = pt.class_pools(jnp.asarray(labels), jnp.asarray(valid), k)
  hard_pools = pt.class_pools(jnp.asarray(labels), jnp.asarray(valid & hard), k)
  unit = pt.normalized_prototypes(jnp.asarray(protos, jnp.float32))
  anchors, negatives = map(np.asarray, pt.draw_indices(jax.random.key(0), pools, hard_pools,
                                                       unit, c, settings))
  hard_c = np.flatnonzero(valid & hard & (labels == c))
  assert set(anchors.tolist()) == set(hard_c.tolist())
  counts = np.bincount(anchors, minlength=len(labels))[hard_c]
  expected = len(anchors) / len(hard_c)
  assert np.sum((counts - expected) ** 2 / expected) < len(hard_c) + 5 * np.sqrt(2 * len(hard_c))
  # Negative classes: classes 0 and 2 (1 is the anchor's, 3 is absent).
  cos = _np_cos(protos[c:c + 1], protos)[0]
  p = np.exp(cos / 0.5)
  p[[c, 3]] = 0
  p /= p.sum()
  neg_labels = labels[negatives.ravel()]
  assert np.all(valid[negatives.ravel()])
  freq = np.bincount(neg_labels, minlength=k) / neg_labels.size
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / neg_labels.size))
  members = np.flatnonzero(valid & (labels == 0))
  within = np.bincount(negatives.ravel()[neg_labels == 0], minlength=len(labels))[members]
  expected = within.sum() / len(members)
  assert np.sum((within - expected) ** 2 / expected) < len(members) + 5 * np.sqrt(2 * len(members))


def test_inverse_cdf_never_draws_a_class_of_probability_zero():
  probs = jnp.asarray([0.0, 0.25, 0.0, 0.75, 0.0])
  u = jnp.asarray([0.0, 0.2499, 0.25, 0.9999, np.nextafter(np.float32(1), np.float32(0))])
  np.testing.assert_array_equal(pt.inverse_cdf(probs, u), [1, 1, 3, 3, 3])
  # Rounding past the end (u * cdf_K == cdf_K) goes to the last positive class.
  np.testing.assert_array_equal(pt.inverse_cdf(probs, jnp.asarray([1.0])), [3])


@pytest.mark.parametrize("dense", [True, False])
def test_contrastive_loss_and_gradient_match_torch_on_the_same_draws(dense):
  """Both ways of computing the negatives' similarities (one matmul against every pixel,
  or the gathered negatives) against PyTorch."""
  torch = pytest.importorskip("torch")
  rep, labels, valid, hard, protos = _contrast_case(seed=1)
  k = protos.shape[0]
  settings = pt.ContrastSettings(num_queries=8, num_negatives=16, temperature=0.5)
  key = jax.random.key(3)
  args = (jnp.asarray(labels), jnp.asarray(valid), jnp.asarray(hard),
          jnp.asarray(protos, jnp.float32), key, settings)
  fn = lambda r: pt.contrastive_loss(r, *args, dense=dense)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.asarray(rep, jnp.float32))

  # PyTorch from the spec, on the draws of the same keys.
  pools = pt.class_pools(args[0], args[1], k)
  hard_pools = pt.class_pools(args[0], args[1] & args[2], k)
  unit = pt.normalized_prototypes(args[3])
  r = torch.tensor(rep, requires_grad=True)
  rn = torch.nn.functional.normalize(r, dim=1)
  pn = torch.nn.functional.normalize(torch.tensor(protos), dim=1)
  present = [c for c in range(k) if np.any(valid & (labels == c))]
  total = 0.0
  for c, kc in zip(range(k), jax.random.split(key, k)):
    if c not in present or not np.any(valid & hard & (labels == c)):
      continue
    a, n = map(np.asarray, pt.draw_indices(kc, pools, hard_pools, unit, c, settings))
    anchors = rn[torch.tensor(a)]
    negatives = rn.detach()[torch.tensor(n)]
    logits = torch.cat([(anchors @ pn[c])[:, None],
                        torch.einsum("qd,qmd->qm", anchors, negatives)], 1) / 0.5
    total = total + torch.nn.functional.cross_entropy(
        logits, torch.zeros(len(a), dtype=torch.long))
  want = total / len(present)
  want.backward()
  assert float(loss) == pytest.approx(float(want.detach()), rel=1e-5)
  np.testing.assert_allclose(grad, r.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_contrastive_loss_is_zero_with_fewer_than_two_classes():
  rep, labels, valid, hard, protos = _contrast_case(seed=2)
  settings = pt.ContrastSettings(num_queries=4, num_negatives=4)
  one_class = jnp.asarray(valid & (labels == 0))
  loss, n = pt.contrastive_loss(jnp.asarray(rep, jnp.float32), jnp.asarray(labels), one_class,
                                jnp.asarray(hard), jnp.asarray(protos, jnp.float32),
                                jax.random.key(0), settings)
  assert float(loss) == 0.0 and int(n) == 1
