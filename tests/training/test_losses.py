"""OHEM and U2PL's valid-fraction-weighted CE against PyTorch written here from the spec,
and their global form: the same on one device as the batch split over two."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ddfp_jax.training.losses import (global_mean, ohem_cross_entropy_sum,
                                      valid_fraction_weighted_ce)


def torch_ohem(logits, labels, thresh, min_kept, ignore=255):
  """The release's rule: keep pixels whose true-class probability is at most
  max(thresh, the min_kept-th smallest); all valid pixels if fewer than min_kept."""
  pred = torch.tensor(logits).permute(0, 3, 1, 2)          # N K H W
  target = torch.tensor(labels, dtype=torch.long).reshape(-1)
  valid = target != ignore
  prob = torch.softmax(pred, 1).permute(1, 0, 2, 3).reshape(pred.shape[1], -1)
  if min_kept <= int(valid.sum()):
    prob = prob.masked_fill(~valid, 1)
    true_prob = prob[target.clamp(max=pred.shape[1] - 1) * valid,
                     torch.arange(len(target))]
    threshold = thresh
    ordered = torch.sort(true_prob)[0]
    if ordered[min(len(ordered), min_kept) - 1] > thresh:
      threshold = ordered[min(len(ordered), min_kept) - 1]
    valid = valid & (true_prob <= threshold)
  target = target.masked_fill(~valid, ignore).reshape(labels.shape)
  return float(torch.nn.functional.cross_entropy(pred, target, ignore_index=ignore))


def _case(seed=0, n=4):
  rs = np.random.RandomState(seed)
  logits = (rs.randn(n, 6, 5, 4) * 2).astype(np.float32)
  labels = rs.randint(0, 4, (n, 6, 5))
  labels[rs.rand(n, 6, 5) < 0.2] = 255
  return logits, labels


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 20), (0.2, 20), (0.7, 10_000),
                                              (0.05, 50)])
def test_ohem_matches_the_release_rule(thresh, min_kept):
  logits, labels = _case()
  total, count = ohem_cross_entropy_sum(jnp.asarray(logits), jnp.asarray(labels), thresh,
                                        min_kept)
  assert float(total / count) == pytest.approx(torch_ohem(logits, labels, thresh, min_kept),
                                               rel=1e-5)


def test_weighted_ce_is_u2pls():
  logits, labels = _case(1)
  pred = torch.tensor(logits).permute(0, 3, 1, 2)
  target = torch.tensor(labels, dtype=torch.long)
  expected = (torch.nn.functional.cross_entropy(pred, target, ignore_index=255)
              * labels.size / (labels != 255).sum())
  assert float(valid_fraction_weighted_ce(jnp.asarray(logits), jnp.asarray(labels))) == (
      pytest.approx(float(expected), rel=1e-5))


def test_global_forms_do_not_depend_on_the_device_split():
  logits, labels = _case(2)
  one_ohem = global_mean(*ohem_cross_entropy_sum(jnp.asarray(logits), jnp.asarray(labels),
                                                 0.7, 30), None)
  one_weighted = valid_fraction_weighted_ce(jnp.asarray(logits), jnp.asarray(labels))

  def per_device(x, y):
    return (global_mean(*ohem_cross_entropy_sum(x, y, 0.7, 30, axis_name="d"), "d"),
            valid_fraction_weighted_ce(x, y, axis_name="d"))
  split = lambda a: a.reshape((2, a.shape[0] // 2) + a.shape[1:])
  ohem, weighted = jax.pmap(per_device, axis_name="d", devices=jax.local_devices()[:2])(
      split(logits), split(labels))
  assert float(ohem.sum()) == pytest.approx(float(one_ohem), rel=1e-5)
  assert float(weighted.sum()) == pytest.approx(float(one_weighted), rel=1e-5)
