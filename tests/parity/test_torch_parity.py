"""PyTorch weight import, and numerical parity of the model with a PyTorch reference.

The reference (`tests/torch_reference.py`) is an independent PyTorch DeepLabV3+ / ResNet
with the state-dict names of the release, U2PL's deep-stem `resnet101.pth` and torchvision.
Its weights and BatchNorm statistics are drawn at random, converted with `ddfp_jax.interop`,
and both models run on the same images in float32 on the CPU.

Errors are norm-wise: max |ours - theirs| / max |theirs| (element-wise ratios say nothing
on entries near zero). The measured ones are 3e-7..7e-6; the bound is 1e-4.

BatchNorm in training mode: PyTorch moves `running_var` towards the *unbiased* batch
variance (x n / (n - 1), n = pixels x batch), Flax towards the biased one (`layers.py`).
The test therefore recomputes, from PyTorch's update and n, the running variance that the
biased rule gives, and compares with that; the image-pooling branch of ASPP (n = batch
size = 2, so the two rules differ by 2x) makes sure the correction is really exercised.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from ddfp_jax.interop import cli, names, pretrained, reading  # noqa: E402
from ddfp_jax.models.deeplab import DeepLabV3Plus  # noqa: E402
from ddfp_jax.models.resnet import ResNet  # noqa: E402
from tiny import tiny_config  # noqa: E402

TOL = 1e-4
NUM_CLASSES = 5
# Small ASPP rates: the stride-16 maps here are 4 x 3, where rates 6-18 would read padding.
RATES = (1, 2, 3)
# Odd, non-square images: exercise the ceil-mode pool and catch swapped H / W.
IMAGE_SHAPE = (2, 57, 41, 3)


def _image(shape=IMAGE_SHAPE, seed=0):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _shapes(module, shape=IMAGE_SHAPE):
  image = jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, False), image)


@pytest.fixture(scope="module")
def segmentation():
  """A random ResNet-18 (width 1/8) DeepLabV3+ in the release's layout, and its conversion.

  Shallow because of training mode: batch statistics over the few pixels of small stride-16
  maps are ill-conditioned, and through a ResNet-50 PyTorch's own float32 result is already
  6e-5..1e-4 away from its float64 one (1e-5 for a ResNet-18). Bottleneck blocks are
  covered in inference by the ResNet-50 and ResNet-101 tests below.
  """
  torch.manual_seed(0)
  torch_model = ref.randomize_(ref.DeepLabV3Plus(NUM_CLASSES, depth=18, width=1 / 8,
                                                 rates=RATES, dropout=0.0), seed=1).eval()
  model = DeepLabV3Plus(num_classes=NUM_CLASSES, depth=18, width=1 / 8, aspp_rates=RATES,
                        dropout_rate=0.0)
  state_dict = ref.numpy_state_dict(torch_model)
  assert "decoder.classifier.1.aux_bn.running_var" in state_dict
  assert "encoder.conv1.6.weight" in state_dict and "decoder.aspp.conv1.1.weight" in state_dict
  variables = pretrained.convert_state_dict(state_dict, _shapes(model), "segmentation")
  return torch_model, model, variables


def test_segmentation_model_matches_in_inference(segmentation):
  torch_model, model, variables = segmentation
  x = _image()
  with torch.no_grad():
    u_ref = torch_model.encode(ref.nchw(x))
    v_clean_ref = torch_model.features(u_ref, perturbed=False)
    v_pert_ref = torch_model.features(u_ref, perturbed=True)
    logits_ref = torch_model.classify(v_clean_ref)
  apply = jax.jit(model.apply, static_argnames=("train", "perturbed", "method"))
  u = apply(variables, x, train=False, method="encode")
  v_clean = apply(variables, u, train=False, perturbed=False, method="features")
  v_pert = apply(variables, u, train=False, perturbed=True, method="features")
  logits = apply(variables, x, train=False)
  assert logits.shape == (2, 15, 11, NUM_CLASSES)
  for ours, theirs in ((u, u_ref), (v_clean, v_clean_ref), (v_pert, v_pert_ref),
                       (logits, logits_ref)):
    assert ref.rel_err(ours, ref.nhwc(theirs)) <= TOL
  # The auxiliary BatchNorm really is a different set of weights.
  assert ref.rel_err(v_pert, ref.nhwc(v_clean_ref)) > 0.1


def test_training_mode_batchnorm_matches(segmentation):
  torch_model, model, variables = segmentation
  torch_model = copy.deepcopy(torch_model).train()  # dropout is 0: only BN changes
  x = _image(seed=1)
  old_state = ref.numpy_state_dict(torch_model)
  sizes, handles = ref.record_batch_sizes(torch_model)
  with torch.no_grad():
    logits_ref = torch_model(ref.nchw(x))
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, True, mutable=["batch_stats"]))(
      variables, x)
  assert ref.rel_err(logits, ref.nhwc(logits_ref)) <= TOL
  assert sizes["decoder.aspp.conv1.2"] == 2  # pooled branch: n / (n - 1) = 2
  assert "decoder.classifier.1.aux_bn" not in sizes
  assert ref.compare_running_stats(updates["batch_stats"], torch_model, old_state, sizes) <= TOL

  for h in handles:
    h.remove()


def test_training_mode_auxiliary_batchnorm_matches(segmentation):
  """Perturbed rows: the classifier block in training mode, through the auxiliary sets."""
  torch_model, model, variables = segmentation
  torch_model = copy.deepcopy(torch_model).train()
  u = np.random.RandomState(2).randn(2, 15, 11, 38).astype(np.float32)
  old_state = ref.numpy_state_dict(torch_model)
  sizes, handles = ref.record_batch_sizes(torch_model)
  with torch.no_grad():
    v_ref = torch_model.features(ref.nchw(u), perturbed=True)
  for h in handles:
    h.remove()
  v, updates = jax.jit(lambda v, u: model.apply(v, u, True, True, method="features",
                                                mutable=["batch_stats"]))(variables, u)
  assert ref.rel_err(v, ref.nhwc(v_ref)) <= TOL
  assert sorted(sizes) == ["decoder.classifier.1.aux_bn", "decoder.classifier.5.aux_bn"]
  assert ref.compare_running_stats(updates["batch_stats"], torch_model, old_state, sizes) <= TOL


def test_torchvision_layout_backbone_matches():
  torch.manual_seed(0)
  torch_net = ref.randomize_(ref.ResNet(depth=50, width=1 / 8, deep_stem=False), seed=3).eval()
  state_dict = ref.numpy_state_dict(torch_net)
  assert "conv1.weight" in state_dict and "layer4.2.bn3.running_var" in state_dict
  state_dict["fc.weight"] = np.zeros((1000, 256), np.float32)  # ImageNet head: dropped
  state_dict["fc.bias"] = np.zeros((1000,), np.float32)
  net = ResNet(depth=50, width=1 / 8, deep_stem=False)
  variables = pretrained.convert_state_dict(state_dict, _shapes(net), "backbone")
  x = _image(seed=4)
  with torch.no_grad():
    low_ref, high_ref = torch_net(ref.nchw(x))
  low, high = jax.jit(lambda v, x: net.apply(v, x, False))(variables, x)
  assert low.shape == (2, 15, 11, 32) and high.shape == (2, 4, 3, 256)
  assert ref.rel_err(low, ref.nhwc(low_ref)) <= TOL
  assert ref.rel_err(high, ref.nhwc(high_ref)) <= TOL


def test_full_size_deep_stem_resnet101_file_converts_and_matches(tmp_path, capsys):
  """The layout of U2PL / DDFP's `resnet101.pth` at full width, through the command line."""
  torch.manual_seed(0)
  torch_net = ref.randomize_(ref.ResNet(depth=101), seed=5).eval()
  state_dict = torch_net.state_dict()
  state_dict["fc.weight"] = torch.zeros(1000, 2048)
  state_dict["fc.bias"] = torch.zeros(1000)
  pth, npz = tmp_path / "resnet101.pth", tmp_path / "resnet101.npz"
  torch.save(state_dict, pth)
  assert cli.main(["--input", str(pth), "--output", str(npz)]) == 0
  report = capsys.readouterr().out
  assert "deep-stem ResNet-101 backbone" in report
  assert "dropped fc.weight, fc.bias, 106 num_batches_tracked" in report

  converted = reading.load_npz(npz)
  variables = {c: converted[c]["backbone"] for c in ("params", "batch_stats")}
  net = ResNet(depth=101)
  x = _image((1, 33, 29, 3), seed=6)
  with torch.no_grad():
    low_ref, high_ref = torch_net(ref.nchw(x))
  low, high = jax.jit(lambda v, x: net.apply(v, x, False))(variables, x)
  assert high.shape == (1, 3, 2, 2048)
  assert ref.rel_err(low, ref.nhwc(low_ref)) <= TOL
  assert ref.rel_err(high, ref.nhwc(high_ref)) <= TOL


@pytest.fixture(scope="module")
def tiny_release_checkpoint(tmp_path_factory):
  """The tiny test config's model in the release's layout, saved like its ckpt.pth."""
  config = tiny_config()
  m = config.model
  torch.manual_seed(0)
  student = ref.randomize_(ref.DeepLabV3Plus(config.data.num_classes, depth=m.depth,
                                             width=m.width, rates=tuple(m.aspp_rates)),
                           seed=7).eval()
  teacher = ref.randomize_(copy.deepcopy(student), seed=8).eval()
  ddp = lambda module: {"module." + k: v for k, v in module.state_dict().items()}
  path = tmp_path_factory.mktemp("release") / "ckpt.pth"
  torch.save({"epoch": 3, "model_state": ddp(student), "teacher_state": ddp(teacher)}, path)
  return config, student, teacher, path


def test_converted_checkpoint_round_trips_through_initial_train_state(tiny_release_checkpoint,
                                                                     tmp_path):
  config, _, teacher, path = tiny_release_checkpoint
  npz = tmp_path / "teacher.npz"
  assert cli.main(["--input", str(path), "--output", str(npz),
                   "--key", "teacher_state"]) == 0
  config.model.pretrained = str(npz)
  state = pretrained.initial_train_state(config, jax.random.key(0))
  model = DeepLabV3Plus(num_classes=config.data.num_classes, depth=config.model.depth,
                        width=config.model.width, aspp_rates=tuple(config.model.aspp_rates))
  x = _image((2, 32, 32, 3), seed=9)
  with torch.no_grad():
    logits_ref = ref.nhwc(teacher(ref.nchw(x)))
  apply = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x, False))
  assert ref.rel_err(apply(state.params, state.batch_stats, x), logits_ref) <= TOL
  assert ref.rel_err(apply(state.teacher_params, state.teacher_batch_stats, x), logits_ref) <= TOL


def test_pth_files_load_directly(tiny_release_checkpoint, tmp_path):
  """A .pth works without conversion: whole model, or only its encoder as a backbone."""
  config, student, _, path = tiny_release_checkpoint
  m = config.model
  model = DeepLabV3Plus(num_classes=config.data.num_classes, depth=m.depth, width=m.width,
                        aspp_rates=tuple(m.aspp_rates))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(model, (1, 32, 32, 3)))
  x = _image((2, 32, 32, 3), seed=10)
  with torch.no_grad():
    logits_ref = ref.nhwc(student(ref.nchw(x)))
    low_ref, high_ref = (ref.nhwc(t) for t in student.encoder(ref.nchw(x)))
  full = pretrained.load_pretrained(zeros, path)  # model_state: the student
  assert ref.rel_err(jax.jit(model.apply)(full, x), logits_ref) <= TOL

  backbone = pretrained.load_pretrained_backbone(zeros, path)
  assert not np.any(np.asarray(backbone["params"]["final"]["kernel"]))  # decoder untouched
  # The encoder alone, as a torchvision-style backbone file with its ImageNet head.
  encoder = {k[len("encoder."):]: v for k, v in student.state_dict().items()
             if k.startswith("encoder.")}
  encoder["fc.weight"], encoder["fc.bias"] = torch.zeros(7, 64), torch.zeros(7)
  torch.save(encoder, tmp_path / "backbone.pth")
  from_file = pretrained.load_pretrained(zeros, tmp_path / "backbone.pth")
  for loaded in (backbone, from_file):
    np.testing.assert_array_equal(
        np.asarray(loaded["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"]),
        student.state_dict()["encoder.layer4.1.bn2.running_var"].numpy())
    low, high = jax.jit(lambda v, x: model.apply(v, x, False, method=lambda mdl, x, t:
                                                 mdl.backbone(x, t)))(loaded, x)
    assert ref.rel_err(low, low_ref) <= TOL and ref.rel_err(high, high_ref) <= TOL


def test_mismatch_lists_missing_unexpected_and_misshaped_keys():
  torch_net = ref.ResNet(depth=18, width=1 / 16)
  state_dict = ref.numpy_state_dict(torch_net)
  del state_dict["layer2.0.bn1.running_var"]
  state_dict["layer5.0.conv1.weight"] = np.zeros((4, 4, 3, 3), np.float32)
  state_dict["layer1.1.conv2.weight"] = np.zeros((4, 4, 1, 1), np.float32)
  target = _shapes(ResNet(depth=18, width=1 / 16))
  with pytest.raises(names.StateDictMismatch) as info:
    pretrained.convert_state_dict(state_dict, target, "backbone", source="resnet18.pth")
  message = str(info.value)
  assert message.startswith("resnet18.pth does not match the model: ")
  assert "1 missing: layer2.0.bn1.running_var" in message
  assert "1 unexpected: layer5.0.conv1.weight" in message
  assert ("1 with the wrong shape: layer1.1.conv2.weight (file (4, 4, 1, 1), "
          "model (4, 4, 3, 3))") in message

  # A ResNet-18 file for a ResNet-50 model: the first few names of each kind, all counted.
  with pytest.raises(names.StateDictMismatch) as info:
    pretrained.convert_state_dict(ref.numpy_state_dict(torch_net),
                                  _shapes(ResNet(depth=50, width=1 / 16)), "backbone")
  error = info.value
  assert len(error.missing) == 160 and not error.unexpected and len(error.wrong_shape) == 28
  assert str(error).count(" more)") == 2  # each list cut after the first few names
  assert "160 missing: layer1.0.bn3.bias, " in str(error)


def test_npz_for_another_model_is_refused(tmp_path):
  torch_net = ref.ResNet(depth=18, width=1 / 16)
  variables = pretrained.convert_state_dict(
      ref.numpy_state_dict(torch_net), _shapes(ResNet(depth=18, width=1 / 16)), "backbone")
  path = tmp_path / "r18.npz"
  reading.save_npz(path, {c: {"backbone": variables[c]} for c in variables})
  wider = DeepLabV3Plus(num_classes=NUM_CLASSES, depth=18, width=1 / 8)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _shapes(wider))
  with pytest.raises(names.StateDictMismatch) as info:
    pretrained.load_pretrained(zeros, path)
  assert ("r18.npz does not match the model: 115 with the wrong shape: "
          "params/backbone/bn1/bias (file (8,), model (16,)), ") in str(info.value)
