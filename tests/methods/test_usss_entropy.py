"""USSS's entropy module and label embeddings (spec usss-algorithm.md section 3) against
references written here: PyTorch in the release's order (upsample the embeddings with the
frozen bilinear deconvolution, then score), NumPy for the centroids, eigh for PCA."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddfp_jax.methods import entropy_module as em
from ddfp_jax.methods import label_embeddings as le
from ddfp_jax.models.resize import upsample_bilinear_deconv


@pytest.mark.parametrize("factor,size", [(8, (3, 5)), (8, (1, 1)), (4, (4, 3)), (2, (2, 5))])
def test_upsample_bilinear_deconv_is_the_frozen_transposed_convolution(factor, size):
  torch = pytest.importorskip("torch")
  import torch_reference as ref  # pylint: disable=import-outside-toplevel
  x = np.random.RandomState(0).randn(2, 3, *size).astype(np.float32)
  up = ref.bilinear_deconv(3, factor)
  with torch.no_grad():
    want = up(torch.tensor(x)).numpy().transpose(0, 2, 3, 1)
  got = upsample_bilinear_deconv(jnp.asarray(x.transpose(0, 2, 3, 1)), factor)
  assert got.shape == want.shape == (2, factor * size[0], factor * size[1], 3)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_entropy_is_between_zero_and_log_k():
  k = 5
  uniform = em.entropy(jnp.zeros((3, k)))
  np.testing.assert_allclose(uniform, np.log(k), rtol=1e-6)
  peaked = em.entropy(jnp.asarray([[100.0, 0, 0, 0, 0]]))
  assert float(peaked[0]) < 1e-6
  h = em.entropy(jax.random.normal(jax.random.key(0), (1000, k)) * 3)
  assert float(h.min()) >= 0 and float(h.max()) <= np.log(k) + 1e-6


def test_entropy_scored_at_the_stride_equals_the_release_order_values_and_gradients():
  """The release: embeddings upsampled x8 by the frozen deconvolution, then scored with
  the normalised label embeddings (n = K + 1 rows, the last, "None", dropped), softmax at
  t, entropy averaged over pixels. Here: scores at the stride, score maps upsampled."""
  torch = pytest.importorskip("torch")
  rs = np.random.RandomState(1)
  b, h, w, d, k, t, factor = 2, 3, 4, 6, 4, 0.7, 8
  emb = rs.randn(b, h, w, d).astype(np.float32) * 2
  label_rows = rs.randn(k + 1, d).astype(np.float32)
  unit = label_rows / np.linalg.norm(label_rows, axis=1, keepdims=True)

  import torch_reference as ref  # pylint: disable=import-outside-toplevel
  e = torch.tensor(emb.transpose(0, 3, 1, 2), requires_grad=True)
  up = ref.bilinear_deconv(d, factor)
  full = up(e)
  scores = torch.nn.functional.conv2d(full, torch.tensor(unit)[:, :, None, None])[:, :-1]
  p = torch.softmax(scores / t, dim=1)
  want = -(p * torch.log(p)).sum(1).mean()
  want.backward()

  def ours(x):
    total, count = em.entropy_sum(x, jnp.asarray(le.normalize_rows(label_rows[:k])),
                                  temperature=t,
                                  upsample=lambda s: upsample_bilinear_deconv(s, factor))
    return total / count

  got, grad = jax.value_and_grad(ours)(jnp.asarray(emb))
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  np.testing.assert_allclose(grad, e.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4,
                             atol=1e-7)


def test_several_centroids_score_the_class_marginal_or_the_nearest_centroid():
  rs = np.random.RandomState(2)
  emb = rs.randn(7, 5).astype(np.float32)
  centroids = le.normalize_rows(rs.randn(3, 2, 5))                      # K = 3, m = 2
  dots = np.einsum("nd,kmd->nkm", emb, centroids) / 0.5
  p = np.exp(dots) / np.exp(dots).sum(axis=(1, 2), keepdims=True)
  marginal = p.sum(2)
  want = -(marginal * np.log(marginal)).sum(1)
  got = em.entropy(em.class_scores(jnp.asarray(emb), jnp.asarray(centroids), "logsumexp", 0.5))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  nearest = em.class_scores(jnp.asarray(emb), jnp.asarray(centroids), "max", 0.5)
  np.testing.assert_allclose(nearest, dots.max(2), rtol=1e-5)
  one = em.class_scores(jnp.asarray(emb), jnp.asarray(centroids[:, :1]), "max")
  np.testing.assert_allclose(one, dots[..., 0] * 0.5, rtol=1e-5)


def test_entropy_sum_counts_valid_pixels_only():
  emb = jnp.asarray(np.random.RandomState(3).randn(1, 2, 2, 4), jnp.float32)
  e = jnp.asarray(le.normalize_rows(np.eye(3, 4)))
  valid = jnp.asarray([[[True, False], [False, True]]])
  total, count = em.entropy_sum(emb, e, valid)
  h = em.entropy(em.class_scores(emb, e))
  assert float(count) == 2
  assert float(total) == pytest.approx(float(h[0, 0, 0] + h[0, 1, 1]), rel=1e-6)


def test_class_centroids_are_class_means_and_kmeans_finds_the_clusters():
  rs = np.random.RandomState(4)
  labels = np.array([0, 0, 1, 1, 1, 255, 0])
  emb = rs.randn(len(labels), 3)
  got, counts = le.class_centroids(emb, labels, num_classes=3)
  np.testing.assert_array_equal(counts, [3, 3, 0])
  for c in (0, 1):
    mean = emb[labels == c].mean(0)
    np.testing.assert_allclose(got[c, 0], mean / np.linalg.norm(mean), rtol=1e-5)
  assert np.linalg.norm(got[2, 0]) == pytest.approx(1.0, rel=1e-5)   # absent: random unit

  # Two classes, each of two tight clusters: k-means with m = 2 finds them.
  centres = {0: np.array([[5.0, 0, 0], [0, 5.0, 0]]), 1: np.array([[0, 0, 5.0], [-5.0, 0, 0]])}
  points, labels = [], []
  for c, cs in centres.items():
    for centre in cs:
      points.append(centre + 0.05 * rs.randn(40, 3))
      labels += [c] * 40
  got, _ = le.class_centroids(np.concatenate(points), np.array(labels), 2, per_class=2)
  for c, cs in centres.items():
    want = cs / np.linalg.norm(cs, axis=1, keepdims=True)
    order = np.argsort(-got[c] @ want[0])             # the centroid nearest the first first
    np.testing.assert_allclose(got[c][order], want, atol=0.02)
  again, _ = le.class_centroids(np.concatenate(points), np.array(labels), 2, per_class=2)
  np.testing.assert_array_equal(got, again)                        # seeded


def test_pca_keeps_the_largest_variance_directions():
  rs = np.random.RandomState(5)
  x = rs.randn(200, 6) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) @ np.linalg.qr(rs.randn(6, 6))[0]
  mean, comp = le.pca(x, 2)
  values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
  top = vectors[:, ::-1][:, :2]
  np.testing.assert_allclose(np.abs(comp.T @ top), np.eye(2), atol=1e-4)
  np.testing.assert_allclose(((x - mean) @ comp).var(0), values[::-1][:2], rtol=1e-4)
  with pytest.raises(ValueError, match="at least 7"):
    le.pca(x[:, :3], 7)


def test_embedding_file_layouts_and_errors(tmp_path):
  rs = np.random.RandomState(6)
  path = str(tmp_path / "emb.npz")
  release = rs.randn(4, 5)                    # K = 3 and the release's "None" row
  le.write_embedding_file(path, {"a": release, "b": rs.randn(2, 2, 5)})
  got = le.read_embedding_file(path, {"a": 3, "b": 2}, dim=5)
  np.testing.assert_allclose(got["a"][:, 0], le.normalize_rows(release[:3]), rtol=1e-6)
  assert got["b"].shape == (2, 2, 5)
  with pytest.raises(le.EmbeddingFileError, match="has no array for c"):
    le.read_embedding_file(path, {"a": 3, "c": 2}, dim=5)
  with pytest.raises(le.EmbeddingFileError, match=r"shape \(4, 5\); a has 5 classes"):
    le.read_embedding_file(path, {"a": 5}, dim=5)
  with pytest.raises(le.EmbeddingFileError, match="does not exist"):
    le.read_embedding_file(str(tmp_path / "none.npz"), {"a": 3}, dim=5)
