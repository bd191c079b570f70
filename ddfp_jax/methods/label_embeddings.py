"""USSS's label embeddings: where the fixed targets of the entropy module come from.

The release draws them at random (N(0, 1) rows, fixed for the run) unless a file gives
them; the paper computes them from a network trained on the labeled images alone (its
supplementary section B.1, unseen here), optionally several per class. This module has the
three sources; every result is (K, m, D), m centroids per class, rows L2-normalised
(`normalize_rows`):

- `random_embeddings`: the release's default;
- `class_centroids`: from pixel embeddings of labeled pixels, per class the mean (m = 1)
  or the centroids of k-means with m clusters (`kmeans`, k-means++ seeding, seeded);
  `pca` fits the projection a stage-1 encoder's features can be reduced with first;
- `read_embedding_file`: a user's `.npz` with one array per domain, (K, D), (K + 1, D)
  (the release's layout: its last row, the "None" label, is dropped, as the release does
  when scoring) or (K, m, D).

These are host-side NumPy helpers for files made offline; inside a run, "centroids"
(one per class or several by k-means) are summed on the device by the collect stage
(`ddfp_jax.methods.usss`).
"""
import os
from typing import Dict, Mapping, Tuple

import numpy as np


class EmbeddingFileError(ValueError):
  """A label-embedding file that cannot be used (one paragraph: what and how to fix)."""


def normalize_rows(x: np.ndarray) -> np.ndarray:
  """Every centroid (last axis) of unit L2 norm."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def random_embeddings(seed: int, num_classes: int, dim: int, per_class: int = 1) -> np.ndarray:
  """(K, m, D) N(0, 1) rows, normalised: the release's label embeddings."""
  rs = np.random.RandomState(seed)
  return normalize_rows(rs.standard_normal((num_classes, per_class, dim)))


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
  """(k, D) centroids of Lloyd's k-means from k-means++ seeding (fixed seed). With fewer
  distinct points than k, centroids repeat (each point is then its own cluster)."""
  points = np.asarray(points, np.float64)
  rs = np.random.RandomState(seed)
  n = points.shape[0]
  centroids = [points[rs.randint(n)]]
  for _ in range(1, k):
    d2 = np.min(((points[:, None] - np.asarray(centroids)[None]) ** 2).sum(-1), axis=1)
    total = d2.sum()
    centroids.append(points[rs.choice(n, p=d2 / total)] if total > 0 else centroids[-1])
  centroids = np.asarray(centroids)
  for _ in range(iterations):
    assign = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    moved = np.asarray([points[assign == j].mean(0) if np.any(assign == j) else centroids[j]
                        for j in range(k)])
    if np.allclose(moved, centroids):
      break
    centroids = moved
  return centroids


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, num_classes: int,
                    per_class: int = 1, ignore_label: int = 255, seed: int = 0,
                    max_points: int = 20_000) -> Tuple[np.ndarray, np.ndarray]:
  """((K, m, D) normalised centroids, (K,) pixel counts) of labeled pixel embeddings
  (N, D) with labels (N,). A class with no pixel gets a random unit vector (its count 0
  says so); a class is subsampled to `max_points` pixels (seeded) for k-means."""
  embeddings = np.asarray(embeddings, np.float64)
  labels = np.asarray(labels).reshape(-1)
  rs = np.random.RandomState(seed)
  fallback = random_embeddings(seed, num_classes, embeddings.shape[-1], per_class)
  out, counts = np.array(fallback, np.float64), np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    members = np.flatnonzero((labels == c) & (labels != ignore_label))
    counts[c] = members.size
    if members.size == 0:
      continue
    if per_class == 1:
      out[c, 0] = embeddings[members].mean(0)
      continue
    if members.size > max_points:
      members = np.sort(rs.choice(members, max_points, replace=False))
    out[c] = kmeans(embeddings[members], per_class, seed + c)
  return normalize_rows(out), counts


def pca(features: np.ndarray, dim: int) -> Tuple[np.ndarray, np.ndarray]:
  """(mean (F,), components (F, dim)) of features (N, F): x -> (x - mean) @ components
  keeps the `dim` directions of largest variance (signs fixed: each component's largest
  entry is positive, so the result does not depend on the SVD's sign choice)."""
  features = np.asarray(features, np.float64)
  if dim > min(features.shape):
    raise ValueError(f"PCA to {dim} dimensions needs at least {dim} samples and features; "
                     f"got {features.shape}")
  mean = features.mean(0)
  _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
  components = vt[:dim].T
  signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(dim)])
  return mean.astype(np.float32), (components * signs).astype(np.float32)


def read_embedding_file(path: str, num_classes: Mapping[str, int], dim: int
                        ) -> Dict[str, np.ndarray]:
  """Label embeddings per domain from a `.npz` (module docstring), normalised, (K, m, D).

  Raises:
    EmbeddingFileError: the file is missing, lacks a domain, or an array has the wrong
      shape.
  """
  how = (f"Write it with numpy.savez(path, **{{domain: array}}), one array per domain "
         f"({', '.join(num_classes)}) of shape (K, {dim}), (K + 1, {dim}) or (K, m, {dim}), "
         f"K the domain's classes, {dim} = usss.embedding_dim.")
  if not os.path.isfile(path):
    raise EmbeddingFileError(f"The label-embedding file {path} does not exist. {how}")
  with np.load(path) as data:
    arrays = {k: np.asarray(data[k]) for k in data.files}
  missing = [d for d in num_classes if d not in arrays]
  if missing:
    raise EmbeddingFileError(f"The label-embedding file {path} has no array for "
                             f"{', '.join(missing)} (it holds {', '.join(arrays) or 'none'}). "
                             f"{how}")
  out = {}
  for domain, k in num_classes.items():
    a = arrays[domain]
    if a.ndim == 2 and a.shape == (k + 1, dim):
      a = a[:k]                              # the release's "None" row
    if a.ndim == 2 and a.shape == (k, dim):
      a = a[:, None]
    if a.ndim != 3 or a.shape[0] != k or a.shape[2] != dim:
      raise EmbeddingFileError(f"The label embeddings of {domain} in {path} have shape "
                               f"{a.shape}; {domain} has {k} classes. {how}")
    out[domain] = normalize_rows(a)
  return out


def write_embedding_file(path: str, embeddings: Mapping[str, np.ndarray]) -> None:
  """The `.npz` that `read_embedding_file` reads."""
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in embeddings.items()})

