"""Feature perturbations for feature-level consistency, one signature for all.

Every perturbation maps a tensor `x` (N, H, W, C) at the *perturbation site* to a perturbed
tensor that stays differentiable in `x` (the perturbation itself is a constant), so the
student learns through the perturbed branch:

    x_perturbed = perturb(x, site, config, rng)

The site says what lies downstream of `x`:
- release (default): `x` is the classifier input u; `site.to_features` is the classifier
  block with the auxiliary BatchNorm, giving the pixel features v whose density is measured.
- paper (eq. 10-12): `x` is v itself; `site.to_features` is the identity.
In both cases `site.to_logits` maps v to logits and `site.log_density` maps v to the
per-pixel log-density log p_V(v) under the flow's *unconditional* mixture (eq. 8).
`site.confident` (N, H, W) marks the pixels whose pseudo label passed the threshold.

Kinds (`config.kind`):
- "density_descending": delta = eps * g / ||g||_2 per pixel, g = grad of the mean NLL of
  confident pixels at delta = 0 (DDFP).
- "random": a Gaussian direction, normalised per pixel to norm eps (Table 4, "Random").
- "uniform_noise": CCT's multiplicative noise x * (1 + U(-r, r)), one noise map shared by
  the batch as CCT draws it.
- "channel_dropout": UniMatch's Dropout2d on features (whole channels, rate 0.5).
- "vat": PS-MT/CCT virtual adversarial direction: one power iteration on the prediction KL
  from a random start of norm xi, normalised per sample (over H, W, C) to norm eps.
- "none": image-level consistency only.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ddfp_jax.training.losses import global_mean

Array = jnp.ndarray

KINDS = ("density_descending", "random", "uniform_noise", "channel_dropout", "vat", "none")


@dataclasses.dataclass(frozen=True)
class PerturbationConfig:
  """Hyper-parameters of every kind; each kind reads the fields it needs."""
  kind: str = "density_descending"
  eps: float = 4.0             # norm of delta (density_descending, random, vat)
  uniform_range: float = 0.3   # r of CCT's U(-r, r) noise
  dropout_rate: float = 0.5    # UniMatch's feature dropout
  vat_xi: float = 1e-6         # size of VAT's finite step (CCT / PS-MT default)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown perturbation kind {self.kind!r}; choose one of {KINDS}.")


class PerturbationSite(NamedTuple):
  """What lies downstream of the perturbed tensor (see the module docstring).

  `axis_name`, inside pmap/shard_map: the device axis over which the objectives of
  density_descending and vat are averaged. With cross-replica BatchNorm every device's
  objective reaches every other device's features, so normalising by the global count
  makes the directions independent of how the batch is split over devices.
  """
  to_features: Callable[[Array], Array]
  to_logits: Callable[[Array], Array]
  log_density: Callable[[Array], Array]
  confident: Array
  axis_name: Optional[str] = None


def l2_normalize(g: Array, axis, eps: float = 1e-12) -> Array:
  """g / max(||g||, eps), as `torch.nn.functional.normalize` (zero stays zero).

  The square root only sees norms above eps (the others take eps): the same values, and a
  finite gradient at g = 0, where sqrt's infinite derivative would make 0 * inf = NaN.
  """
  g = g.astype(jnp.float32)
  squared = jnp.sum(jnp.square(g), axis=axis, keepdims=True)
  large = squared > eps * eps
  norm = jnp.where(large, jnp.sqrt(jnp.where(large, squared, 1.0)), eps)
  return g / norm


def _add_constant(x: Array, delta: Array) -> Array:
  return x + jax.lax.stop_gradient(delta).astype(x.dtype)


def masked_mean_nll(log_density: Array, mask: Array, axis_name: Optional[str] = None) -> Array:
  """-mean of `log_density` over `mask` (0 when the mask is empty)."""
  weight = mask.astype(jnp.float32)
  return global_mean(-jnp.sum(weight * log_density), jnp.sum(weight), axis_name)


def density_descending(x: Array, site: PerturbationSite, config: PerturbationConfig,
                       rng: jax.Array) -> Array:
  """DDFP: push confident pixels' features towards lower density under the flow."""
  del rng
  x_const = jax.lax.stop_gradient(x)

  def nll(delta):
    v = site.to_features(x_const + delta)
    return masked_mean_nll(site.log_density(v), site.confident, site.axis_name)

  grad = jax.grad(nll)(jnp.zeros(x.shape, jnp.float32))
  return _add_constant(x, config.eps * l2_normalize(grad, axis=-1))


def random_direction(x: Array, site: PerturbationSite, config: PerturbationConfig,
                     rng: jax.Array) -> Array:
  del site
  direction = jax.random.normal(rng, x.shape, jnp.float32)
  return _add_constant(x, config.eps * l2_normalize(direction, axis=-1))


def uniform_noise(x: Array, site: PerturbationSite, config: PerturbationConfig,
                  rng: jax.Array) -> Array:
  del site
  r = config.uniform_range
  noise = jax.random.uniform(rng, (1,) + x.shape[1:], jnp.float32, -r, r)
  return x * (1.0 + jax.lax.stop_gradient(noise)).astype(x.dtype)


def channel_dropout(x: Array, site: PerturbationSite, config: PerturbationConfig,
                    rng: jax.Array) -> Array:
  del site
  keep_prob = 1.0 - config.dropout_rate
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0], 1, 1, x.shape[-1]))
  return x * (keep.astype(x.dtype) / jnp.asarray(keep_prob, x.dtype))


def virtual_adversarial(x: Array, site: PerturbationSite, config: PerturbationConfig,
                        rng: jax.Array) -> Array:
  x_const = jax.lax.stop_gradient(x)
  per_sample = tuple(range(1, x.ndim))
  target = jax.nn.softmax(site.to_logits(site.to_features(x_const)), axis=-1)
  target = jax.lax.stop_gradient(target)

  def kl(r):
    log_q = jax.nn.log_softmax(site.to_logits(site.to_features(x_const + r)), axis=-1)
    # KL(p || q), summed over classes and pixels, averaged over the batch ("batchmean").
    kl_sum = jnp.sum(target * (jnp.log(jnp.maximum(target, 1e-30)) - log_q))
    return global_mean(kl_sum, jnp.asarray(x.shape[0], jnp.float32), site.axis_name)

  start = config.vat_xi * l2_normalize(jax.random.normal(rng, x.shape), axis=per_sample)
  grad = jax.grad(kl)(start)
  return _add_constant(x, config.eps * l2_normalize(grad, axis=per_sample))


def no_perturbation(x: Array, site: PerturbationSite, config: PerturbationConfig,
                    rng: jax.Array) -> Array:
  del site, config, rng
  return x


_PERTURBATIONS = {
    "density_descending": density_descending,
    "random": random_direction,
    "uniform_noise": uniform_noise,
    "channel_dropout": channel_dropout,
    "vat": virtual_adversarial,
    "none": no_perturbation,
}


def perturb(x: Array, site: PerturbationSite, config: PerturbationConfig,
            rng: jax.Array) -> Array:
  """Applies the perturbation `config.kind` to `x` (see the module docstring)."""
  return _PERTURBATIONS[config.kind](x, site, config, rng)
