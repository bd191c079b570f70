"""The cases the model benchmarks time: each `make_<name>(shapes, dtype)` returns a function
and its arguments, ready for `timing.measure` (see benchmarks/model.py for what each one
is)."""
import dataclasses
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

@dataclasses.dataclass(frozen=True)
class Shapes:
  """The sizes one benchmark run uses (per device)."""
  crop: int
  labeled: int
  unlabeled: int
  num_classes: int
  depth: int = 101
  width: float = 1.0
  flow_samples: int = 20_480
  flow_hidden: int = 256
  output_stride: int = 16
  aspp_rates: Tuple[int, ...] = (6, 12, 18)
  note: str = ""

  @property
  def images(self) -> int:
    return self.labeled + self.unlabeled


SHAPES: Dict[str, Shapes] = {
    # The paper's Pascal VOC cell: crop 513, 4 labeled + 4 unlabeled per GPU.
    "paper": Shapes(513, 4, 4, 21, note="VOC: crop 513, 4+4 per device"),
    # Cityscapes: crop 769, 4 + 4 per GPU.
    "paper_769": Shapes(769, 4, 4, 19, note="Cityscapes: crop 769, 4+4 per device"),
    # The real network at a size a CPU times in minutes (stride-16 map 17x17, so the ASPP
    # dilations 6 and 12 still reach real pixels).
    "cpu": Shapes(257, 2, 2, 21, note="ResNet-101 at crop 257, 2+2 per device"),
    # Seconds on any machine; what the tests run.
    "tiny": Shapes(65, 1, 1, 5, depth=18, width=0.125, flow_samples=256, flow_hidden=32,
                   note="ResNet-18 at 1/8 width, crop 65, 1+1"),
    # configs/demo.py's network and batch: what one demo step costs.
    "demo": Shapes(64, 8, 8, 11, depth=18, width=0.25, flow_samples=4096, flow_hidden=64,
                   output_stride=8, aspp_rates=(2, 4, 6),
                   note="the demo: ResNet-18 at 1/4 width, stride 8, crop 64, 8+8"),
}

ALL_BENCHMARKS = ("backbone", "aspp", "aspp_space_to_batch", "aspp_shifted", "aspp_undilated",
                  "decoder",
                  "model_forward", "model_train", "flow", "perturbation", "train_step")
FLOAT32_ONLY = ("flow", "perturbation")
TORCH_BENCHMARKS = ("model_forward", "model_train", "flow")
DTYPES = ("float32", "bfloat16")


def bench_config(shapes: Shapes, dtype: str):
  """The train config of these shapes: base defaults, the shapes' sizes, a schedule whose
  step 1 is already in the perturbation phase."""
  from configs import base  # pylint: disable=import-outside-toplevel
  config = base.get_config()
  config.data.num_classes = shapes.num_classes
  config.data.crop_size = shapes.crop
  config.data.labeled_per_device = shapes.labeled
  config.data.unlabeled_per_device = shapes.unlabeled
  config.model.depth = shapes.depth
  config.model.width = shapes.width
  config.model.output_stride = shapes.output_stride
  config.model.aspp_rates = tuple(shapes.aspp_rates)
  config.model.dtype = dtype
  config.ddfp.flow.num_samples = shapes.flow_samples
  config.ddfp.flow.hidden = shapes.flow_hidden
  config.steps_per_epoch = 1
  config.total_steps = 10
  config.schedule.sup_only_epochs = 0
  config.schedule.flow_start_epoch = 0
  return config


def _images(key, n: int, crop: int) -> jax.Array:
  return jax.random.normal(key, (n, crop, crop, 3), jnp.float32)


def _labels(key, n: int, size: int, num_classes: int) -> jax.Array:
  return jax.random.randint(key, (n, size, size), 0, num_classes, jnp.int32)


def _model_and_variables(config):
  """The model and its variables (initialised at a small crop: the shapes of the
  parameters do not depend on it, and init at the paper's crop is slow on a CPU)."""
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  model = builders.build_model(config)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 65, 65, 3)), train=False))(
      jax.random.key(0))
  return model, variables


def _train_apply(model, variables, *args, method=None):
  """model.apply in train mode (batch statistics, dropout), BN updates discarded."""
  out, _ = model.apply(variables, *args, method=method, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})
  return out


def _backbone_outputs(model, shapes):
  """Shapes and dtypes of the backbone's (stride 4, stride 16) outputs (traced only:
  nothing is initialised or run)."""
  image = jax.ShapeDtypeStruct((shapes.images, shapes.crop, shapes.crop, 3), jnp.float32)
  outputs = lambda x: model.init_with_output(jax.random.key(0), x, False, method=_backbone)
  return jax.eval_shape(outputs, image)[0]


def _backbone(module, x, train):
  return module.backbone(x, train)


def _grads_of(loss_fn):
  """Forward + backward: gradients w.r.t. the parameters and the input."""
  return jax.grad(loss_fn, argnums=(0, 1))


def _loss_sum(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def make_backbone(shapes, dtype):
  config = bench_config(shapes, dtype)
  model, variables = _model_and_variables(config)
  x = _images(jax.random.key(2), shapes.images, shapes.crop)
  return (lambda v, x: model.apply(v, x, False, method=_backbone)), (variables, x)


def _aspp(shapes, dtype, atrous_impl="dilated", rates=(6, 12, 18)):
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models.deeplab import ASPP  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models.layers import scaled  # pylint: disable=import-outside-toplevel
  _, high = _backbone_outputs(builders.build_model(bench_config(shapes, dtype)), shapes)
  aspp = ASPP(features=scaled(256, shapes.width), rates=tuple(rates),
              dtype=builders.compute_dtype(dtype),
              atrous_impl=atrous_impl)
  x = jax.random.normal(jax.random.key(3), high.shape, jnp.float32).astype(high.dtype)
  aspp_variables = jax.jit(lambda k: aspp.init(k, x, False))(jax.random.key(4))

  def loss(params, x):
    return _loss_sum(_train_apply(aspp, {**aspp_variables, "params": params}, x, True))

  return _grads_of(loss), (aspp_variables["params"], x)


def make_aspp(shapes, dtype):
  return _aspp(shapes, dtype)


def make_aspp_space_to_batch(shapes, dtype):
  return _aspp(shapes, dtype, atrous_impl="space_to_batch")


def make_aspp_shifted(shapes, dtype):
  return _aspp(shapes, dtype, atrous_impl="shifted")


def make_aspp_undilated(shapes, dtype):
  return _aspp(shapes, dtype, rates=(1, 1, 1))


def _decode(module, low, high):
  """Backbone outputs -> logits, train mode."""
  return module.classify(module.features(module.head(low, high, True), True))


def make_decoder(shapes, dtype):
  config = bench_config(shapes, dtype)
  model, variables = _model_and_variables(config)
  low, high = _backbone_outputs(model, shapes)
  k1, k2 = jax.random.split(jax.random.key(4))
  inputs = (jax.random.normal(k1, low.shape).astype(low.dtype),
            jax.random.normal(k2, high.shape).astype(high.dtype))

  def loss(params, inputs):
    v = {**variables, "params": params}
    return _loss_sum(_train_apply(model, v, *inputs, method=_decode))

  return _grads_of(loss), (variables["params"], inputs)


def make_model_forward(shapes, dtype):
  config = bench_config(shapes, dtype)
  model, variables = _model_and_variables(config)
  x = _images(jax.random.key(5), shapes.images, shapes.crop)
  return (lambda v, x: model.apply(v, x, False)), (variables, x)


def make_model_train(shapes, dtype):
  from ddfp_jax.training.losses import cross_entropy_sum  # pylint: disable=import-outside-toplevel
  from ddfp_jax.models.resize import resize_bilinear  # pylint: disable=import-outside-toplevel
  config = bench_config(shapes, dtype)
  model, variables = _model_and_variables(config)
  k1, k2 = jax.random.split(jax.random.key(6))
  x = _images(k1, shapes.images, shapes.crop)
  y = _labels(k2, shapes.images, shapes.crop, shapes.num_classes)

  def loss(params, x):
    logits = _train_apply(model, {**variables, "params": params}, x, True)
    logits = resize_bilinear(logits, (shapes.crop, shapes.crop))
    total, count = cross_entropy_sum(logits, y, 255)
    return total / jnp.maximum(count, 1.0)

  return _grads_of(loss), (variables["params"], x)


def feature_dim(shapes) -> int:
  from ddfp_jax.models.layers import scaled  # pylint: disable=import-outside-toplevel
  return scaled(256, shapes.width)


def _density(shapes):
  from ddfp_jax.models import builders  # pylint: disable=import-outside-toplevel
  config = bench_config(shapes, "float32")
  density = builders.build_density(config)
  params = density.init(jax.random.key(7), jnp.zeros((2, feature_dim(shapes))))
  return density, params


def make_flow(shapes, dtype):
  del dtype   # float32 only
  density, params = _density(shapes)
  k1, k2 = jax.random.split(jax.random.key(8))
  v = jax.random.normal(k1, (shapes.flow_samples, feature_dim(shapes)))
  # Labeled rows, and unlabeled (-1) rows that score under the whole mixture.
  labels = jax.random.randint(k2, (shapes.flow_samples,), -1, shapes.num_classes)

  def step(params, v):
    return jax.value_and_grad(lambda p: density.apply(p, v, labels, method="nll"))(params)

  return step, (params, v)


def make_perturbation(shapes, dtype):
  del dtype   # float32 only
  from ddfp_jax.methods.perturbations import (  # pylint: disable=import-outside-toplevel
      PerturbationConfig, PerturbationSite, perturb)
  config = bench_config(shapes, "float32")
  model, variables = _model_and_variables(config)
  density, flow_params = _density(shapes)
  size = -(-shapes.crop // 4)
  v = jax.random.normal(jax.random.key(9), (shapes.unlabeled, size, size,
                                             feature_dim(shapes)))
  confident = jnp.ones(v.shape[:3], bool)

  def delta(flow_params, v):
    site = PerturbationSite(lambda f: f, lambda f: model.apply(variables, f, method="classify"),
                            lambda f: density.apply(flow_params, f, method="log_prob"),
                            confident)
    return perturb(v, site, PerturbationConfig(), jax.random.key(10))

  return delta, (flow_params, v)


def make_train_step(shapes, dtype):
  from ddfp_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  from ddfp_jax.methods import ddfp  # pylint: disable=import-outside-toplevel
  from ddfp_jax.training import step as train_step  # pylint: disable=import-outside-toplevel
  config = bench_config(shapes, dtype)
  small = config.copy_and_resolve_references()
  small.data.crop_size = 65   # parameter shapes do not depend on the crop; init is cheaper
  state = state_lib.create_train_state(small, jax.random.key(11))
  state = state.replace(step=jnp.asarray(1, state.step.dtype))   # past the flow's start
  keys = jax.random.split(jax.random.key(12), 5)
  batch = {
      "labeled_image": _images(keys[0], shapes.labeled, shapes.crop),
      "labeled_label": _labels(keys[1], shapes.labeled, shapes.crop, shapes.num_classes),
      "unlabeled_weak": _images(keys[2], shapes.unlabeled, shapes.crop),
      "unlabeled_strong": _images(keys[3], shapes.unlabeled, shapes.crop),
      "unlabeled_ignore": jnp.zeros((shapes.unlabeled, shapes.crop, shapes.crop), jnp.int32),
  }
  step = train_step.make_train_step(config)
  phase = ddfp.Phase(semi=True, train_flow=True, perturb=True)
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), (train_step.AXIS,))
  spec = jax.sharding.PartitionSpec
  # One device of the data-parallel step: the axis collectives run over a mesh of one.
  one_device = jax.shard_map(lambda s, b: step(s, b, phase), mesh=mesh,
                             in_specs=(spec(), spec()), out_specs=(spec(), spec()),
                             check_vma=False)
  return one_device, (state, batch)


MAKERS: Dict[str, Callable] = {name: globals()[f"make_{name}"] for name in ALL_BENCHMARKS}
