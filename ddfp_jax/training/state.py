"""The train state: one pytree with everything a run needs to continue exactly."""
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddfp_jax.methods import get_method
from ddfp_jax.models import builders
from ddfp_jax.models.multi_domain import MultiDomainSegmenter
from ddfp_jax.training import optim

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Student, EMA teacher, the student's optimiser, the method's extra state, step, RNG.

  `extra` belongs to the method (`Method.init_extra`; e.g. DDFP's flow and its Adam
  state; {} for methods without one). `tx` is the student's optimiser, built once here
  and used by the train step; it is not a pytree leaf, so checkpoints hold only arrays.
  `rng` holds raw key data (uint32) so that checkpoints are plain arrays; per-step and
  per-device keys are derived from it by `fold_in`, so it never changes during a run and a
  resumed run draws the same random numbers as an uninterrupted one.
  """
  step: jnp.ndarray
  params: PyTree
  batch_stats: PyTree
  teacher_params: PyTree
  teacher_batch_stats: PyTree
  opt_state: optax.OptState
  extra: PyTree
  rng: jnp.ndarray
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)


def feature_dim(config: ml_collections.ConfigDict, variables) -> int:
  """Width of the pixel features v of the model (the flow's input); of the pixel
  embeddings for the multi-domain model."""
  model = builders.build_model(config)
  if isinstance(model, MultiDomainSegmenter):
    return model.embedding_dim
  image = jnp.zeros((1, config.data.crop_size, config.data.crop_size, 3), jnp.float32)
  u = jax.eval_shape(lambda: model.apply(variables, image, False, method="encode"))
  v = jax.eval_shape(lambda: model.apply(variables, jnp.zeros(u.shape, u.dtype), False,
                                         method="features"))
  return v.shape[-1]


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       prepare_variables: Optional[Callable[[PyTree], PyTree]] = None
                       ) -> TrainState:
  """Initialises every part of the state on the host (unreplicated).

  The model's initial variables ({"params", "batch_stats"}) start the student and the
  teacher, after `prepare_variables` when given: that is how pretrained weights come in
  (`ddfp_jax.interop.pretrained.initial_train_state` reads `config.model.pretrained`).
  """
  k_model, k_extra, k_run = jax.random.split(rng, 3)
  variables = init_variables(config, k_model)
  if prepare_variables is not None:
    variables = prepare_variables(variables)
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optim.student_optimizer(config)
  extra = get_method(config.method).init_extra(config, k_extra, feature_dim(config, variables))
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      teacher_params=copy(params),
      teacher_batch_stats=copy(batch_stats),
      opt_state=tx.init(params),
      extra=extra,
      rng=jax.random.key_data(k_run),
      tx=tx,
  )


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array):
  """The model's freshly initialised variables {"params", "batch_stats"}."""
  model = builders.build_model(config)
  crop = config.data.crop_size
  image = jnp.zeros((1, crop, crop, 3), jnp.float32)
  return jax.jit(lambda k: model.init(k, image, train=False))(rng)
