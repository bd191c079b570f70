"""ddfp-jax: Density-Descending Feature Perturbation for semi-supervised segmentation in JAX."""
