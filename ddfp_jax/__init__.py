"""ddfp-jax: Density-Descending Feature Perturbation for semi-supervised segmentation in JAX."""
# distrax imports TensorFlow Probability's JAX substrate. If TensorFlow is already loaded at
# that moment, TFP also loads its TensorFlow half, which needs the separate tf_keras package
# (and that one pulls the full tensorflow wheel). The input pipeline imports TensorFlow, so
# distrax is imported first, here, whatever module of the package is imported first.
import distrax as _distrax  # noqa: F401
