"""Build the segmentation model (DeepLabV3+, or USSS's multi-domain model) and DDFP's flow
density from a config."""
from typing import Optional

import jax.numpy as jnp
import ml_collections

from ddfp_jax.models import atrous_choice
from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models import multi_domain
from ddfp_jax.models.density import FeatureDensity
from ddfp_jax.models.multi_domain import MultiDomainSegmenter

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict, axis_name: Optional[str] = None):
  """The segmentation model of `config`: DeepLabV3+, or for method "usss" the
  multi-domain model over it or over a DRN-D (`build_multi_domain_model`)."""
  if config.method == "usss":
    return build_multi_domain_model(config, axis_name)
  return build_deeplab(config, axis_name)


def build_deeplab(config: ml_collections.ConfigDict,
                  axis_name: Optional[str] = None) -> DeepLabV3Plus:
  m = config.model
  return DeepLabV3Plus(
      num_classes=config.data.num_classes,
      depth=m.depth,
      deep_stem=m.deep_stem,
      output_stride=m.output_stride,
      width=m.width,
      aspp_rates=tuple(m.aspp_rates),
      atrous_impl=atrous_choice.resolve(config).impl,
      multi_grid=tuple(m.multi_grid),
      mixed_bn=m.mixed_bn,
      decoder=m.decoder,
      projection_dim=m.projection_dim,
      projection_on=m.projection_on,
      aux_head=m.aux_head,
      dropout_rate=m.dropout_rate,
      axis_name=axis_name,
      dtype=compute_dtype(m.dtype),
  )


def build_multi_domain_model(config: ml_collections.ConfigDict,
                             axis_name: Optional[str] = None) -> MultiDomainSegmenter:
  """USSS's model: the shared encoder `usss.encoder` ("drn": DRN-D-`usss.drn_depth`;
  "deeplab": this config's DeepLabV3+ up to its pixel features), a head per domain of
  `usss.domains`, the embedding head."""
  from ddfp_jax.methods import usss  # pylint: disable=import-outside-toplevel
  u = config.usss
  dtype = compute_dtype(config.model.dtype)
  deeplab = build_deeplab(config, axis_name) if u.encoder == "deeplab" else None
  encoder = multi_domain.build_encoder(
      u.encoder, drn_depth=u.drn_depth, width=config.model.width, deeplab=deeplab,
      axis_name=axis_name, dtype=dtype, atrous_impl=atrous_choice.resolve(config).impl)
  return MultiDomainSegmenter(encoder=encoder, num_classes=usss.num_classes(config),
                              embedding_dim=u.embedding_dim, none_class=u.none_class,
                              dtype=dtype)


def build_density(config: ml_collections.ConfigDict) -> FeatureDensity:
  f = config.ddfp.flow
  return FeatureDensity(num_classes=config.data.num_classes, num_blocks=f.num_blocks,
                        hidden=f.hidden, clamp=f.clamp, learn_means=f.learn_means)
