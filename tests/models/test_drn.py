"""DRN-D against a PyTorch DRN-D written here from fyu/drn's description, through the
weight importer.

The reference (tests/torch_reference.py's `TorchDRND`) builds its layers as fyu/drn's
`DRN(arch='D')` does, with its state-dict names: `layer0`, `layer1`, `layer2`, `layer7`, `layer8` are Sequentials of (conv, BN,
ReLU); layers 3 to 6 are ResNet blocks (tests/torch_reference.py's, whose names are
fyu/drn's too), dilated 2 in layer5 and 4 in layer6, first block included. fyu/drn's
blocks take a (conv1, conv2) dilation pair, but it is (d, d) throughout DRN-D (a
(d // 2, d) first block needs `new_level`, which its DRN-D builds layers 5 and 6
without), and its Bottleneck reads only the second entry. `fc` is a 1x1 conv with bias.
Weights and BatchNorm statistics are random; errors are norm-wise,
max |ours - theirs| / max |theirs|, bound 1e-4.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import torch_reference as ref  # noqa: E402
from ddfp_jax.interop import names, pretrained  # noqa: E402
from ddfp_jax.models.drn import DRN, DRN_LAYOUTS  # noqa: E402
from torch_reference import TorchDRND  # noqa: E402

TOL = 1e-4
WIDTH = 1 / 8
# Odd and non-square: stride-2 layers on odd sizes, swapped H / W; 9 x 7 at stride 8, so
# that layer6's dilation 4 reads real pixels, not only padding.
IMAGE_SHAPE = (2, 67, 53, 3)


def _image(seed=0):
  return np.random.RandomState(seed).randn(*IMAGE_SHAPE).astype(np.float32)


def _target(model):
  image = jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE[1:], jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), image)


@pytest.fixture(scope="module", params=[22, 54])
def converted(request):
  """A random reduced-width DRN-D (basic blocks for 22, bottlenecks for 54), its
  conversion, and the JAX model."""
  depth = request.param
  torch.manual_seed(0)
  torch_model = ref.randomize_(TorchDRND(depth, WIDTH), seed=depth).eval()
  model = DRN(depth=depth, width=WIDTH)
  state_dict = {"module." + k: v for k, v in ref.numpy_state_dict(torch_model).items()}
  variables = pretrained.convert_drn_state_dict(state_dict, _target(model))
  return torch_model, model, variables


def test_inference_matches_torch_at_stride_8(converted):
  torch_model, model, variables = converted
  x = _image()
  with torch.no_grad():
    theirs = ref.nhwc(torch_model(ref.nchw(x)))
  ours = jax.jit(lambda v, x: model.apply(v, x, False))(variables, x)
  assert ours.shape == (2, 9, 7, 64) == theirs.shape  # ceil(67 / 8), ceil(53 / 8), 512 / 8
  assert ref.rel_err(ours, theirs) <= TOL
  # The dilated layers as shifted matrix products (layers.shifted_taps_conv): the same
  # parameters, the same features.
  shifted = DRN(depth=model.depth, width=WIDTH, atrous_impl="shifted")
  assert ref.rel_err(jax.jit(lambda v, x: shifted.apply(v, x, False))(variables, x),
                     theirs) <= TOL

  # The comparison sees each dilation: the same weights with one of them wrong give other
  # features.
  for dilations in ((1, 4, 2), (2, 2, 2), (2, 4, 1)):
    other = TorchDRND(model.depth, WIDTH, dilations=dilations).eval()
    other.load_state_dict(torch_model.state_dict())
    with torch.no_grad():
      assert ref.rel_err(ref.nhwc(other(ref.nchw(x))), theirs) > 0.01, dilations


def test_training_mode_matches_torch(converted):
  """Batch statistics in the forward, and the running statistics each BatchNorm leaves
  (PyTorch's unbiased variance update turned into the biased one, as in
  tests/parity/test_torch_parity.py).

  Against PyTorch in float64: through DRN-D-54's bottlenecks, with batch statistics over
  126 pixels at stride 8, PyTorch's own float32 result is 4e-5..5e-5 from its float64
  one (ours 3e-5..4e-5), too close to the bound for a float32-to-float32 comparison; for
  DRN-D-22 both are 3e-6 away.
  """
  torch_model, model, variables = converted
  torch_model = copy.deepcopy(torch_model).double().train()
  old_state = ref.numpy_state_dict(torch_model)
  sizes, handles = ref.record_batch_sizes(torch_model)
  x = _image(seed=1)
  with torch.no_grad():
    theirs = ref.nhwc(torch_model(ref.nchw(x).double()))
  for h in handles:
    h.remove()
  ours, updates = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
      variables, x)
  assert ref.rel_err(ours, theirs) <= TOL
  # Every BatchNorm saw the batch (a mean and a variance each).
  assert 2 * len(sizes) == len(traverse_util.flatten_dict(updates["batch_stats"]))
  assert ref.compare_running_stats(updates["batch_stats"], torch_model, old_state, sizes,
                                   kind="drn") <= TOL


@pytest.mark.parametrize("depth", sorted(DRN_LAYOUTS))
def test_full_size_names_shapes_and_parameter_counts(depth):
  """Every depth at full width: the state dict fyu/drn's constructor makes (built on the
  meta device, no memory) has exactly our arrays under the mapped names, and the
  parameter count, with the 1000-class fc, is the release's published one (README:
  16.4M, 26.5M, 35.8M, 54.8M)."""
  with torch.device("meta"):
    torch_model = TorchDRND(depth, num_classes=1000)
  theirs = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()
            if not names.is_dropped(k, names.DRN_KIND)}
  flat = traverse_util.flatten_dict(_target(DRN(depth=depth)))
  ours = {}
  for key, leaf in flat.items():
    shape = leaf.shape[::-1][:2] + leaf.shape[:2] if leaf.ndim == 4 else leaf.shape
    ours[names.torch_name(key[0], key[1:], names.DRN_KIND)] = tuple(shape)  # HWIO -> OIHW
  assert ours == theirs
  assert theirs["layer7.0.weight"] == (512, 2048 if DRN_LAYOUTS[depth][0] else 512, 3, 3)
  count = sum(int(np.prod(leaf.shape)) for key, leaf in flat.items() if key[0] == "params")
  published = {22: 16.4, 38: 26.5, 54: 35.8, 105: 54.8}[depth]
  assert round((count + 512 * 1000 + 1000) / 1e6, 1) == published


def test_strict_import_reports_every_mismatch():
  torch_model = TorchDRND(22, 1 / 16)
  state_dict = ref.numpy_state_dict(torch_model)
  assert {"fc.weight", "fc.bias", "layer0.1.num_batches_tracked"} <= set(state_dict)
  target = _target(DRN(depth=22, width=1 / 16))
  pretrained.convert_drn_state_dict(state_dict, target)  # fc and the counters are dropped

  del state_dict["layer7.1.running_var"]
  state_dict["layer9.0.weight"] = np.zeros((32, 32, 3, 3), np.float32)
  state_dict["layer3.1.conv2.weight"] = np.zeros((4, 4, 1, 1), np.float32)
  with pytest.raises(names.StateDictMismatch, match="^drn_d_22.pth does not match") as info:
    pretrained.convert_drn_state_dict(state_dict, target, source="drn_d_22.pth")
  error = info.value
  assert (error.missing, error.unexpected) == (["layer7.1.running_var"], ["layer9.0.weight"])
  assert error.wrong_shape == ["layer3.1.conv2.weight (file (4, 4, 1, 1), model (4, 4, 3, 3))"]

  # A DRN-D-22 file for a DRN-D-38: the extra blocks are missing, nothing else.
  with pytest.raises(names.StateDictMismatch) as info:
    pretrained.convert_drn_state_dict(ref.numpy_state_dict(torch_model),
                                      _target(DRN(depth=38, width=1 / 16)))
  error = info.value
  assert not error.unexpected and not error.wrong_shape
  assert {k.split(".")[0] + "." + k.split(".")[1] for k in error.missing} == {
      "layer3.2", "layer4.2", "layer4.3", "layer5.2", "layer5.3", "layer5.4", "layer5.5",
      "layer6.2"}


def test_usss_run_starts_its_drn_encoder_from_the_imagenet_file(converted, tmp_path):
  """model.pretrained for USSS: fyu/drn's .pth (saved here by PyTorch) fills the encoder
  of the multi-domain model, the heads and embedding head keep their init, and a file of
  another depth is refused naming what differs."""
  from ddfp_jax.interop.pretrained import initial_train_state
  from ddfp_jax.training.state import create_train_state
  from tiny import tiny_config
  torch_model, model, variables = converted
  path = str(tmp_path / f"drn_d_{model.depth}.pth")
  torch.save({k: torch.from_numpy(v) for k, v in ref.numpy_state_dict(torch_model).items()},
             path)
  config = tiny_config(method="usss", **{
      "usss.encoder": "drn", "usss.drn_depth": model.depth, "model.width": WIDTH,
      "usss.embedding_dim": 8, "data.crop_size": 32, "model.pretrained": path})
  state = initial_train_state(config, jax.random.key(0))
  fresh = create_train_state(config, jax.random.key(0))
  flat = lambda t: traverse_util.flatten_dict(t)
  for collection in ("params", "batch_stats"):
    got = flat(getattr(state, collection))
    want = flat(variables[collection])
    init = flat(getattr(fresh, collection))
    for k, v in got.items():
      if k[0] == "encoder":
        np.testing.assert_array_equal(v, want[k[1:]])
      else:
        np.testing.assert_array_equal(v, init[k])
  assert flat(state.params).keys() - {k for k in flat(state.params) if k[0] == "encoder"}
  other = config.copy_and_resolve_references()
  other.usss.drn_depth = 22 if model.depth == 54 else 54
  with pytest.raises(names.StateDictMismatch, match="does not match the model"):
    initial_train_state(other, jax.random.key(0))
  # Through the trainer: one paragraph naming the file and the mismatch, no traceback.
  small = other.copy_and_resolve_references()
  small.data.num_classes = 11
  small.data.data_dir = str(tmp_path / "tfds")
  small.data.demo_image_size, small.data.demo_labeled = 48, 4
  small.data.demo_unlabeled, small.data.demo_validation = 8, 4
  from ddfp_jax.config.check import ConfigError
  from ddfp_jax.training import trainer
  with pytest.raises(ConfigError, match=r"config.model.pretrained \(.*drn_d_\d+.pth\) cannot "
                     r"start this run: .*does not match the model.*unset "):
    trainer.train_and_evaluate(small, str(tmp_path / "run"))
