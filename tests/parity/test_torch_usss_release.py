"""The USSS release's model files imported (`ddfp_jax.interop.usss_release`), against the
release's `Net` written here in PyTorch from the spec (section 2): `base` the DRN-D
without avgpool and fc, `seg` 1 x 1 heads with bias, `up` and `en_up` frozen bilinear x8
transposed convolutions (kernel 16, stride 8, padding 4, one group per channel, FCN's
filler), `en_map` the 1 x 1 embedding head.

The release orders its heads as its dataset table does (IDD, CS, CVD, SUN, NYU_S), not as
the command line: here the config's domains are day (played by CamVid, 11 classes) and
night (by Cityscapes' place in that table, 6 classes), so the release's head 0 is night's
and head 1 day's. Outputs are compared norm-wise, max |ours - theirs| / max |theirs|.
"""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import torch_reference as ref  # noqa: E402
from ddfp_jax.interop import cli, names, usss_release  # noqa: E402
from ddfp_jax.methods import usss  # noqa: E402
from ddfp_jax.models import builders  # noqa: E402
from ddfp_jax.models.resize import upsample_bilinear_deconv  # noqa: E402
from ddfp_jax.training import trainer  # noqa: E402
from ddfp_jax.training.checkpoint import Checkpointer  # noqa: E402
from ddfp_jax.training.state import create_train_state  # noqa: E402
from tiny import as_flags, tiny_config  # noqa: E402

TOL = 1e-4
WIDTH = 1 / 8
EMBED = 8
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The release's dataset of each domain, and its heads in the release's order.
RELEASE_DATASETS = ("CVD", "CS")          # day, night
RELEASE_HEADS = {"CS": 6 + 1, "CVD": 11 + 1}


class ReleaseNet(nn.Module):
  """The release's drnet.Net: heads in the order of `classes`, outputs at full size."""

  def __init__(self, classes, embed_dim, depth=22, width=WIDTH):
    super().__init__()
    drn = ref.TorchDRND(depth, width)
    self.base = nn.Sequential(*[getattr(drn, f"layer{i}") for i in range(9)])
    out_dim = drn.fc.in_channels
    self.seg = nn.ModuleList([nn.Conv2d(out_dim, n, 1, bias=True) for n in classes.values()])
    self.up = nn.ModuleList([ref.bilinear_deconv(n, 8) for n in classes.values()])
    self.en_map = nn.Conv2d(out_dim, embed_dim, 1, bias=True)
    self.en_up = ref.bilinear_deconv(embed_dim, 8)

  def forward(self, x):
    f = self.base(x)
    return [up(seg(f)) for seg, up in zip(self.seg, self.up)], self.en_up(self.en_map(f))


def _config(**extra):
  return tiny_config(method="usss", **{
      "usss.encoder": "drn", "usss.drn_depth": 22, "model.width": WIDTH,
      "usss.embedding_dim": EMBED, "data.crop_size": 32, **extra})


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """The release's files: model_best.pth (a DataParallel state dict), the same inside a
  checkpoint.pth.tar, and label_embedding.pt."""
  torch.manual_seed(0)
  net = ReleaseNet(RELEASE_HEADS, EMBED)
  ref.randomize_(net.base, seed=3)
  for m in list(net.seg) + [net.en_map]:
    with torch.no_grad():
      m.bias.normal_()
  net.eval()
  root = tmp_path_factory.mktemp("release")
  state = {"module." + k: v for k, v in net.state_dict().items()}
  torch.save(state, root / "model_best.pth")
  torch.save({"epoch": 150, "arch": str(net.__class__), "state_dict": state,
              "best_acc": 0.4375, "optimizer": {}}, root / "checkpoint.pth.tar")
  table = {d: torch.randn(n, EMBED) for d, n in RELEASE_HEADS.items()}
  torch.save(table, root / "label_embedding.pt")
  return net, root, table


def test_model_and_label_embeddings_import_as_the_release_computes(release, tmp_path):
  net, root, table = release
  config = _config()
  workdir = tmp_path / "run"
  report, imported = usss_release.import_usss_checkpoint(
      str(root / "checkpoint.pth.tar"), config, str(workdir),
      label_embeddings=str(root / "label_embedding.pt"), release_datasets=RELEASE_DATASETS)
  assert "heads day = CVD (12 channels), night = CS (7 channels)" in report
  assert "(epoch 150, best_acc 0.4375)" in report and "/latest/0" in report
  assert imported.usss.label_embeddings == "file"
  assert imported.usss.embedding_file == str(workdir / usss_release.EMBEDDINGS_FILE)
  with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
    state = ckpt.restore(create_train_state(imported, jax.random.key(imported.seed)))
  assert int(state.step) == 0

  model = builders.build_model(imported)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = np.random.RandomState(1).randn(2, 64, 48, 3).astype(np.float32)

  @jax.jit
  def forward(variables, x):
    f = model.apply(variables, x, False, method="encode")
    heads = [upsample_bilinear_deconv(model.apply(variables, f, d, method="classify"))
             for d in range(2)]
    return heads, upsample_bilinear_deconv(model.apply(variables, f, method="embed"))

  heads, embedding = forward(variables, x)
  with torch.no_grad():
    theirs, their_embedding = net(ref.nchw(x))
  assert heads[0].shape == (2, 64, 48, 12) and heads[1].shape == (2, 64, 48, 7)
  assert ref.rel_err(heads[0], ref.nhwc(theirs[1])) <= TOL     # day: the release's head 1
  assert ref.rel_err(heads[1], ref.nhwc(theirs[0])) <= TOL     # night: its head 0
  assert ref.rel_err(embedding, ref.nhwc(their_embedding)) <= TOL

  # The label embeddings the entropies score against: the release's rows, normalised, the
  # "None" row dropped as the release drops it.
  rows = usss.current_embeddings(state.extra)
  for domain, name in zip(("day", "night"), RELEASE_DATASETS):
    want = table[name].numpy()[:-1]
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(rows[domain])[:, 0], want, rtol=1e-6, atol=1e-6)


def test_the_cli_imports_model_best_and_the_run_scores_each_domain(release, tmp_path, capsys):
  _, root, _ = release
  workdir = tmp_path / "run"
  config_file = os.path.join(REPO, "configs", "usss", "demo.py")
  overrides = {"usss.encoder": "drn", "usss.drn_depth": 22, "model.width": WIDTH,
               "usss.embedding_dim": EMBED, "data.crop_size": 32, "data.num_classes": 11,
               "data.data_dir": str(tmp_path / "tfds"), "data.demo_image_size": 48,
               "data.demo_labeled": 4, "data.demo_unlabeled": 8, "data.demo_validation": 4,
               "data.eval_per_device": 1}
  argv = ["--input", str(root / "model_best.pth"), "--kind", "usss_checkpoint",
          "--label_embeddings", str(root / "label_embedding.pt"), "--release_datasets",
          ",".join(RELEASE_DATASETS), "--config", config_file, "--workdir", str(workdir)]
  assert cli.main(argv + as_flags(overrides)) == 0
  out = capsys.readouterr().out
  assert "DRN-D-22 encoder, heads day = CVD" in out
  assert (f"--config.usss.label_embeddings=file --config.usss.embedding_file="
          f"{workdir / usss_release.EMBEDDINGS_FILE}") in out
  # A second import into the same run directory is refused; nothing is overwritten.
  assert cli.main(argv + as_flags(overrides)) == 1
  assert "already holds checkpoints" in capsys.readouterr().err

  config = _config(**overrides, **{"usss.label_embeddings": "file",
                                   "usss.embedding_file": str(workdir / "label_embeddings.npz")})
  results = trainer.evaluate_checkpoint(config, str(workdir))
  assert results["student/day/per_class_iou"].shape == (11,)
  assert results["student/night/per_class_iou"].shape == (6,)


def test_files_that_do_not_fit_are_refused_naming_what_differs(release, tmp_path):
  net, root, _ = release
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  # Another class count for night: its head (the release's seg.0) has the wrong shape.
  config = _config(**{"usss.domain_data.night.num_classes": 5})
  target = jax.eval_shape(lambda k: create_train_state(config, k), jax.random.key(0))
  target = {"params": target.params, "batch_stats": target.batch_stats}
  with pytest.raises(names.StateDictMismatch, match=r"seg\.0\.weight \(file \(7, 64, 1, 1\), "
                     r"model \(6, 64, 1, 1\)\)") as info:
    usss_release.release_usss_variables(state, target, (1, 0))
  assert not info.value.missing and not info.value.unexpected
  # An encoder of another depth: the encoder's keys, named as in the file (base.I).
  deeper = _config(**{"usss.drn_depth": 38})
  target = jax.eval_shape(lambda k: create_train_state(deeper, k), jax.random.key(0))
  target = {"params": target.params, "batch_stats": target.batch_stats}
  with pytest.raises(names.StateDictMismatch) as info:
    usss_release.release_usss_variables(state, target, (1, 0))
  assert info.value.missing and all(n.startswith("base.") for n in info.value.missing)
  # An upsampling kernel that is not the frozen bilinear one.
  bent = dict(state, **{"up.1.weight": state["up.1.weight"] * 1.5})
  target = jax.eval_shape(lambda k: create_train_state(_config(), k), jax.random.key(0))
  target = {"params": target.params, "batch_stats": target.batch_stats}
  with pytest.raises(names.StateDictMismatch, match="up.1.weight .not the release's frozen"):
    usss_release.release_usss_variables(bent, target, (1, 0))
  # Domains without a release name, another method, an embedding file without a domain.
  with pytest.raises(ValueError, match="day, night have no dataset of the release"):
    usss_release.import_usss_checkpoint(str(root / "model_best.pth"), _config(),
                                        str(tmp_path / "a"))
  with pytest.raises(ValueError, match="usss config whose usss.encoder is 'drn'"):
    usss_release.import_usss_checkpoint(str(root / "model_best.pth"), tiny_config(),
                                        str(tmp_path / "b"))
  torch.save({"CS": torch.randn(7, EMBED)}, tmp_path / "one.pt")
  with pytest.raises(ValueError, match="has no embeddings of CVD .the release's name of day"):
    usss_release.import_usss_checkpoint(
        str(root / "model_best.pth"), _config(), str(tmp_path / "c"),
        label_embeddings=str(tmp_path / "one.pt"), release_datasets=RELEASE_DATASETS)
  assert not os.path.exists(tmp_path / "c" / "checkpoints")


def test_release_head_order_follows_its_dataset_table():
  assert usss_release.release_datasets_of(("cityscapes", "idd")) == ("CS", "IDD")
  assert usss_release.release_head_index(("CS", "IDD")) == (1, 0)        # IDD is first
  assert usss_release.release_head_index(("CS", "CVD")) == (0, 1)
  assert usss_release.release_head_index(("SUN", "CS")) == (1, 0)
  with pytest.raises(ValueError, match="distinct names"):
    usss_release.release_datasets_of(("a", "b"), ("CS", "CS"))
  with pytest.raises(ValueError, match="one per domain"):
    usss_release.release_datasets_of(("a", "b"), ("CS",))
