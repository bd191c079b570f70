"""DDFP end to end against PyTorch: the density-descending delta, one step's loss, and the
import of a whole release checkpoint.

The reference is written here with PyTorch autograd on the independent model of
`tests/torch_reference.py`, the release's flow construction from FrEIA 0.2
(`torch_reference.ReleaseFlow`) and the GMM mixture log-density of the spec (section 8):
log p(v) = logsumexp_k(-(D log 2 pi + |z - mu_k|^2) / 2 + log(1/K)) + log|det J|. Weights are
random and converted with `ddfp_jax.interop`; both sides run in float32 on the CPU.

Errors are norm-wise, max |ours - theirs| / max |theirs|, bound 1e-4. Measured (2-core CPU,
these seeds): delta 4e-7..7e-7 (both sites), losses <= 7e-7.
"""
import copy
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("FrEIA")
F = torch.nn.functional

import torch_reference as ref  # noqa: E402
from ddfp_jax.models import builders  # noqa: E402
from ddfp_jax.config import presets
from ddfp_jax.interop import cli, names, pretrained, release
from ddfp_jax.training import trainer
from ddfp_jax.training.checkpoint import Checkpointer  # noqa: E402
from ddfp_jax.models.deeplab import DeepLabV3Plus  # noqa: E402
from ddfp_jax.models.density import FeatureDensity  # noqa: E402
from ddfp_jax.methods.perturbations import PerturbationConfig, PerturbationSite, perturb  # noqa: E402
from ddfp_jax.training.state import create_train_state  # noqa: E402
from ddfp_jax.methods.ddfp import Phase  # noqa: E402
from ddfp_jax.training.step import pmap_train_step, replicate  # noqa: E402
from tiny import as_flags, synthetic_batch, tiny_config  # noqa: E402
import paths

TOL = 1e-4
EPS = 4.0
REPO = str(paths.REPO)


def _density_variables(flow, num_classes):
  """Our FeatureDensity and its variables, converted from the release's flow state dict."""
  density = FeatureDensity(num_classes=num_classes, num_blocks=2,
                           hidden=flow.inn.module_list[0].subnet1[0].out_features)
  dim = flow.means.shape[1]
  shapes = jax.eval_shape(lambda: density.init(jax.random.key(0), jnp.zeros((2, dim))))
  ddp = {"module." + k: v for k, v in ref.numpy_state_dict(flow).items()}
  return density, release.release_flow_variables(ddp, shapes)


def _torch_nll(flow, v, confident):
  """-mean of log p(v) over confident pixels, v NCHW, confident (N, H, W) bool."""
  rows = v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])
  return -flow.log_density(rows[confident.reshape(-1)]).mean()


def _torch_delta(flow, x, to_features, confident):
  """eps g / |g|_2 per pixel, g = d NLL / d delta at delta = 0 (autograd)."""
  delta = torch.zeros_like(x, requires_grad=True)
  nll = _torch_nll(flow, to_features(x.detach() + delta), confident)
  grad, = torch.autograd.grad(nll, delta)
  return EPS * F.normalize(grad, p=2, dim=1)


NUM_CLASSES = 5


# 0. The flow's training loss, which the benchmarks time on both sides.


def test_flow_nll_and_its_gradient_match_torch():
  flow = ref.ReleaseFlow(dim=32, hidden=32, num_classes=NUM_CLASSES, scale=1.5, seed=3)
  density, variables = _density_variables(flow, NUM_CLASSES)
  rng = np.random.RandomState(0)
  v = rng.randn(300, 32).astype(np.float32)
  # Classes, unlabeled rows (-1, the mixture) and ignored rows (255, left out).
  labels = rng.choice([0, 1, 2, 3, 4, -1, 255], size=300).astype(np.int32)
  v_t = torch.from_numpy(v).requires_grad_(True)
  theirs = flow.nll(v_t, torch.from_numpy(labels).long())
  grad_theirs, = torch.autograd.grad(theirs, v_t)
  nll = lambda x: density.apply(variables, x, labels, method="nll")
  ours, grad_ours = jax.value_and_grad(nll)(jnp.asarray(v))
  assert ref.rel_err(ours, theirs.detach().numpy()) < TOL
  assert ref.rel_err(grad_ours, grad_theirs.numpy()) < TOL
  assert np.abs(grad_theirs.numpy()[labels == 255]).max() == 0.0


# 1. The density-descending delta at both sites.


@pytest.fixture(scope="module")
def tiny_models():
  """ResNet-18 (width 1/8) DeepLabV3+, v of 32 channels; a flow with 32 hidden units."""
  torch.manual_seed(0)
  torch_model = ref.randomize_(ref.DeepLabV3Plus(NUM_CLASSES, depth=18, width=1 / 8,
                                                 rates=(1, 2, 3), dropout=0.0), seed=1).eval()
  model = DeepLabV3Plus(num_classes=NUM_CLASSES, depth=18, width=1 / 8, aspp_rates=(1, 2, 3),
                        dropout_rate=0.0)
  image = jax.ShapeDtypeStruct((1, 40, 40, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, False), image)
  variables = pretrained.convert_state_dict(ref.numpy_state_dict(torch_model), shapes,
                                            "segmentation")
  flow = ref.ReleaseFlow(dim=32, hidden=32, num_classes=NUM_CLASSES, scale=1.5, seed=2)
  density, density_vars = _density_variables(flow, NUM_CLASSES)
  rs = np.random.RandomState(3)
  x = rs.randn(2, 40, 40, 3).astype(np.float32)
  with torch.no_grad():
    u = torch_model.encode(ref.nchw(x))
    v = torch_model.features(u)
  confident = rs.rand(2, *u.shape[2:]) < 0.4
  return dict(torch_model=torch_model, model=model, variables=variables, flow=flow,
              density=density, density_vars=density_vars, u=u, v=v, confident=confident)


@pytest.mark.parametrize("site", ["classifier_input", "feature"])
def test_density_descending_delta_matches_torch_autograd(tiny_models, site):
  m = tiny_models
  confident = torch.from_numpy(m["confident"])
  if site == "classifier_input":
    # Release: delta on u, density after the classifier block in train mode (batch
    # statistics) through the auxiliary BatchNorms.
    torch_model = copy.deepcopy(m["torch_model"]).train()
    x = m["u"]
    to_features_ref = lambda t: torch_model.features(t, perturbed=True)
    to_features = lambda t: m["model"].apply(m["variables"], t, True, True, method="features",
                                             mutable=["batch_stats"])[0]
  else:
    # Paper (eq. 10-12): delta on v itself.
    x = m["v"]
    to_features_ref = lambda t: t
    to_features = lambda t: t
  delta_ref = ref.nhwc(_torch_delta(m["flow"], x, to_features_ref, confident))

  log_density = lambda f: m["density"].apply(m["density_vars"], f, method="log_prob")
  to_logits = lambda f: m["model"].apply(m["variables"], f, method="classify")
  site_ = PerturbationSite(to_features, to_logits, log_density, jnp.asarray(m["confident"]))
  x_np = ref.nhwc(x)
  perturbed = jax.jit(lambda x: perturb(x, site_, PerturbationConfig(eps=EPS),
                                        jax.random.key(0)))(x_np)
  delta = np.asarray(perturbed) - x_np

  err = ref.rel_err(delta, delta_ref)
  assert err <= TOL, err
  norms = np.linalg.norm(delta_ref, axis=-1)
  if site == "classifier_input":   # batch statistics reach every pixel
    np.testing.assert_allclose(norms, EPS, rtol=1e-5)
  else:                            # only confident pixels carry a gradient
    np.testing.assert_allclose(norms[m["confident"]], EPS, rtol=1e-5)
    assert not np.any(norms[~m["confident"]])
  # The direction really descends the density (a sign error would pass the norm checks).
  with torch.no_grad():
    before = _torch_nll(m["flow"], to_features_ref(x), confident)
    after = _torch_nll(m["flow"], to_features_ref(x + 0.01 * ref.nchw(delta)), confident)
  assert after > before


# 2. One DDFP loss value through the train step.


def _confident_threshold(confidence):
  """A threshold about the median confidence, in a gap of the sorted values wider than
  float32 noise, so that both sides keep exactly the same pixels."""
  c = np.sort(confidence.ravel())
  order = np.argsort(np.abs(np.arange(len(c) - 1) - len(c) // 2))
  for i in order:
    if c[i + 1] - c[i] > 1e-4:
      return float((c[i] + c[i + 1]) / 2)
  raise AssertionError("no gap in the teacher's confidences")


def test_ddfp_loss_matches_torch():
  """L = CE_sup + 0.5 CE_strong + 0.5 CE_perturbed, one DDFP step on 2 devices (cross-replica
  BN, global means) vs PyTorch on the whole batch, with the release's preset: the teacher
  in train mode on [labeled, unlabeled], delta on u through the auxiliary BatchNorms.
  CutMix and dropout off. (The paper's site, delta on v, is the identity `to_features` of
  the delta test above; one step compiles for ~20 s here, so only one preset runs.)"""
  # 11 classes as in the import test below, which then reuses the compiled init.
  config = tiny_config(**{"preset": "release", "model.dropout_rate": 0.0,
                          "semi.cutmix_prob": 0.0, "ddfp.flow.noise_std": 0.0,
                          "data.num_classes": 11})
  config = presets.apply_preset(config)
  k, m = config.data.num_classes, config.model
  devices = jax.local_devices()[:2]
  batch = synthetic_batch(config, len(devices), seed=5)
  whole = {name: value.reshape((-1,) + value.shape[2:]) for name, value in batch.items()}
  torch.manual_seed(0)
  make = lambda seed: ref.randomize_(ref.DeepLabV3Plus(k, depth=m.depth, width=m.width,
                                                       rates=tuple(m.aspp_rates), dropout=0.0),
                                     seed=seed)
  student, teacher = make(11), make(12)
  flow = ref.ReleaseFlow(dim=student.decoder.final.in_channels, hidden=config.ddfp.flow.hidden,
                     num_classes=k, scale=1.5, seed=13)

  # PyTorch: teacher pseudo labels (train mode on [labeled, unlabeled] for the release,
  # inference on the unlabeled images for the paper).
  x_l, y_l = ref.nchw(whole["labeled_image"]), torch.from_numpy(whole["labeled_label"]).long()
  x_u, x_s = ref.nchw(whole["unlabeled_weak"]), ref.nchw(whole["unlabeled_strong"])
  ignore = torch.from_numpy(whole["unlabeled_ignore"])
  n_l, size = x_l.shape[0], y_l.shape[1:]
  up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)
  with torch.no_grad():
    t_model = copy.deepcopy(teacher).train(config.semi.teacher_train_mode)
    t_logits = t_model(torch.cat([x_l, x_u]))[n_l:] if config.semi.teacher_train_mode \
        else t_model(x_u)
    probs = torch.softmax(up(t_logits), dim=1)
  confidence, pseudo = probs.max(dim=1)
  real = (ignore != 255).numpy()
  config.semi.threshold = _confident_threshold(confidence.numpy()[real])
  top2 = probs.topk(2, dim=1).values
  assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-5   # no ties in the argmax
  keep = (confidence > config.semi.threshold) & (ignore != 255)
  pseudo = torch.where(keep, pseudo, torch.full_like(pseudo, 255))

  # PyTorch: the student's step.
  s_model = copy.deepcopy(student).train()
  ce = lambda logits, labels: F.cross_entropy(up(logits), labels, ignore_index=255)
  u = s_model.encode(torch.cat([x_l, x_s]))
  v = s_model.features(u, perturbed=False)
  logits = s_model.classify(v)
  sup, image = ce(logits[:n_l], y_l), ce(logits[n_l:], pseudo)
  grid = v.shape[2:]
  confident = F.interpolate(pseudo[:, None].float(), size=grid, mode="nearest")[:, 0] != 255
  if config.semi.site == "classifier_input":
    delta = _torch_delta(flow, u[n_l:], lambda t: s_model.features(t, perturbed=True),
                         confident)
    v_perturbed = s_model.features(u[n_l:] + delta, perturbed=True)
  else:
    delta = _torch_delta(flow, v[n_l:], lambda t: t, confident)
    v_perturbed = v[n_l:] + delta
  feature = ce(s_model.classify(v_perturbed), pseudo)
  loss = sup + 0.5 * image + 0.5 * feature
  with torch.no_grad():   # delta moves the loss far more than the tolerance
    unperturbed = ce(s_model.classify(s_model.features(u[n_l:], perturbed=True)), pseudo)
  assert abs(feature.item() - unperturbed.item()) > 100 * TOL * feature.item()
  expected = {"loss": loss, "loss_sup": sup, "loss_image": image, "loss_feature": feature}

  # Ours: the same weights in the train state, one step in the perturbation phase.
  state = create_train_state(config, jax.random.key(0))
  convert = lambda module: pretrained.convert_state_dict(
      ref.numpy_state_dict(module), {"params": state.params, "batch_stats": state.batch_stats},
      "segmentation")
  s_vars, t_vars = convert(student), convert(teacher)
  _, flow_vars = _density_variables(flow, k)
  state = state.replace(params=s_vars["params"], batch_stats=s_vars["batch_stats"],
                        teacher_params=t_vars["params"],
                        teacher_batch_stats=t_vars["batch_stats"],
                        extra={**state.extra, "flow_params": flow_vars})
  p_step = pmap_train_step(config, devices=devices)
  _, metrics = p_step(replicate(state, devices), batch,
                      Phase(semi=True, train_flow=False, perturb=True))
  assert int(metrics["nonfinite"]) == 0
  assert float(metrics["confident_fraction"]) == pytest.approx(
      float(keep.float().sum()) / real.sum(), abs=1e-6)
  for name, value in expected.items():
    err = ref.rel_err(metrics[name], value.item())
    assert err <= TOL, (name, err)
  assert 0 < float(metrics["loss_feature"])


# 3. A release training checkpoint, imported for evaluation.


def _demo_overrides(data_dir):
  """The tiny test model on a small demo set, as config overrides."""
  return {"data.num_classes": 11, "data.data_dir": str(data_dir),
          "data.demo_image_size": 48, "data.demo_labeled": 8, "data.demo_unlabeled": 16,
          "data.demo_validation": 6, "data.eval_per_device": 2}


def _as_numpy1_pickle(path):
  """The file as NumPy 1 writes it: NumPy scalars under `numpy.core.multiarray`."""
  with zipfile.ZipFile(path) as zin:
    items = [(info, zin.read(info.filename)) for info in zin.infolist()]
  with zipfile.ZipFile(path, "w") as zout:
    for info, data in items:
      if info.filename.endswith("data.pkl"):
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
      zout.writestr(info, data)


def _release_checkpoint(config, path):
  """student, teacher, flow; saved as the release's train script saves ckpt.pth."""
  k, m = config.data.num_classes, config.model
  torch.manual_seed(0)
  student = ref.randomize_(ref.DeepLabV3Plus(k, depth=m.depth, width=m.width,
                                             rates=tuple(m.aspp_rates)), seed=21).eval()
  teacher = ref.randomize_(copy.deepcopy(student), seed=22).eval()
  flow = ref.ReleaseFlow(dim=student.decoder.final.in_channels, hidden=config.ddfp.flow.hidden,
                     num_classes=k, scale=1.5, seed=23)
  ddp = lambda module: {"module." + key: v for key, v in module.state_dict().items()}
  sgd = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
  adam = torch.optim.Adam(flow.parameters(), lr=1e-3, betas=(0.5, 0.9))
  torch.save({"epoch": 40, "model_state": ddp(student), "teacher_state": ddp(teacher),
              "optimizer_state": sgd.state_dict(), "best_miou": np.float64(0.7512),
              "nf_model_state": ddp(flow), "nf_optimizer_state": adam.state_dict()}, path)
  _as_numpy1_pickle(path)
  return student, teacher, flow


def test_release_checkpoint_imports_and_evaluates(tmp_path, capsys):
  overrides = _demo_overrides(tmp_path / "tfds")
  config = tiny_config(**overrides)
  path = tmp_path / "ckpt_best.pth"
  student, teacher, flow = _release_checkpoint(config, path)
  with open(path, "rb") as f:
    assert b"numpy.core.multiarray" in zipfile.ZipFile(f).read("ckpt_best/data.pkl")
  workdir = tmp_path / "run"
  argv = ["--input", str(path), "--kind", "release_checkpoint", "--config",
          os.path.join(REPO, "configs", "demo.py"), "--workdir", str(workdir)]
  assert cli.main(argv + as_flags(overrides)) == 0
  report = capsys.readouterr().out
  assert "DeepLabV3+ on a deep-stem ResNet-18 (width x0.0625), 11 classes" in report
  assert "11 GMM means of dimension 16 (epoch 40, best_miou 0.7512)" in report
  assert f"Score it with: python main.py --config {argv[5]} --workdir {workdir} --mode " \
         "eval --config." in report
  assert os.path.isdir(workdir / "checkpoints" / "latest" / "0")
  # A second import into the same run directory is refused.
  assert cli.main(argv + as_flags(overrides)) == 1
  assert "already holds checkpoints" in capsys.readouterr().err

  with Checkpointer(workdir / "checkpoints") as ckpt:
    state = ckpt.restore(create_train_state(config, jax.random.key(config.seed)))
  model = builders.build_model(config)
  x = np.random.RandomState(24).randn(2, 32, 32, 3).astype(np.float32)
  apply = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x, False))
  with torch.no_grad():
    for ours, theirs in (((state.params, state.batch_stats), student),
                         ((state.teacher_params, state.teacher_batch_stats), teacher)):
      assert ref.rel_err(apply(*ours, x), ref.nhwc(theirs(ref.nchw(x)))) <= TOL
    v = np.random.RandomState(25).randn(300, 16).astype(np.float32)
    log_p_ref = flow.log_density(torch.from_numpy(v)).numpy()
  density = builders.build_density(config)
  log_p = jax.jit(lambda p, v: density.apply(p, v, method="log_prob"))(state.extra["flow_params"], v)
  assert ref.rel_err(log_p, log_p_ref) <= TOL
  assert int(state.step) == 0

  results = trainer.evaluate_checkpoint(config, str(workdir))
  assert 0.0 <= results["student/miou"] <= 1.0 and 0.0 <= results["teacher/miou"] <= 1.0
  assert "Checkpoint step 0: teacher mIoU" in capsys.readouterr().out


def test_release_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path, capsys):
  config = tiny_config(**{"data.num_classes": 11})
  path = tmp_path / "ckpt.pth"
  _release_checkpoint(config, path)
  wider = tiny_config(**{"data.num_classes": 11, "ddfp.flow.hidden": 32})
  with pytest.raises(names.StateDictMismatch, match=r"\[nf_model_state\] does not "
                     r"match the model: 20 with the wrong shape: flow/blocks_0/subnet1/"):
    release.import_release_checkpoint(path, wider, tmp_path / "a")
  other = tiny_config(**{"data.num_classes": 5})
  with pytest.raises(names.StateDictMismatch, match=r"\[model_state\] does not match"):
    release.import_release_checkpoint(path, other, tmp_path / "b")
  # A single model's state dict is not a training checkpoint.
  torch.save({"model_state": torch.load(path, weights_only=False)["model_state"]},
             tmp_path / "student.pth")
  argv = ["--input", str(tmp_path / "student.pth"), "--kind", "release_checkpoint",
          "--config", os.path.join(REPO, "configs", "demo.py"), "--workdir",
          str(tmp_path / "c")]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "is not a training checkpoint of the release: it has no teacher_state, " \
         "nf_model_state" in err
  with pytest.raises(SystemExit) as exit_info:   # argparse: --workdir is needed
    cli.main(argv[:-2])
  assert exit_info.value.code == 2
  assert "needs --config and --workdir" in capsys.readouterr().err
