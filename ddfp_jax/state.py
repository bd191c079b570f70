"""The train state: one pytree with everything a run needs to continue exactly."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddfp_jax import builders, optim, torch_import

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Student, EMA teacher, flow density, both optimisers, step and RNG.

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
  flow_params: PyTree
  flow_opt_state: optax.OptState
  rng: jnp.ndarray


def global_labeled_batch(config: ml_collections.ConfigDict) -> int:
  return config.data.labeled_per_device * jax.device_count()


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Initialises every part of the state on the host (unreplicated).

  With `config.model.pretrained` set (a PyTorch `.pth` or its converted `.npz`, see
  `torch_import`), the student and teacher start from those weights.
  """
  model = builders.build_model(config)
  density = builders.build_density(config)
  k_model, k_flow, k_run = jax.random.split(rng, 3)
  crop = config.data.crop_size
  image = jnp.zeros((1, crop, crop, 3), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, image, train=False))(k_model)
  if config.model.get("pretrained"):
    # A backbone file (ImageNet ResNet) replaces the backbone, a converted segmentation
    # model everything; the teacher starts as a copy either way.
    variables = torch_import.load_pretrained(variables, config.model.pretrained)
  u = jax.eval_shape(lambda: model.apply(variables, image, False, method="encode"))
  v = jax.eval_shape(lambda: model.apply(variables, jnp.zeros(u.shape, u.dtype), False,
                                         method="features"))
  flow_params = jax.jit(lambda k: density.init(k, jnp.zeros((2, v.shape[-1]))))(k_flow)
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optim.student_optimizer(config, global_labeled_batch(config))
  flow_tx = optim.flow_optimizer(config)
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      teacher_params=copy(params),
      teacher_batch_stats=copy(batch_stats),
      opt_state=tx.init(params),
      flow_params=flow_params,
      flow_opt_state=flow_tx.init(flow_params),
      rng=jax.random.key_data(k_run),
  )
