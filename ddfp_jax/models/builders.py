"""Build the segmentation model and DDFP's flow density from a config."""
from typing import Optional

import jax.numpy as jnp
import ml_collections

from ddfp_jax.models import atrous_choice
from ddfp_jax.models.deeplab import DeepLabV3Plus
from ddfp_jax.models.density import FeatureDensity

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict,
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


def build_density(config: ml_collections.ConfigDict) -> FeatureDensity:
  f = config.ddfp.flow
  return FeatureDensity(num_classes=config.data.num_classes, num_blocks=f.num_blocks,
                        hidden=f.hidden, clamp=f.clamp, learn_means=f.learn_means)
