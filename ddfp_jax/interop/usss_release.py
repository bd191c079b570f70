"""The USSS release's checkpoints, imported as a train state of a usss config.

The release (the spec's ../shared usss-algorithm.md, section 2) saves its `Net` with
`torch.save(model.state_dict())` (`model_best.pth`, `model-EEE.pth`) and, for resuming,
`checkpoint.pth.tar` = {"state_dict": that, "optimizer", "epoch", "best_acc", ...}; the
label embeddings go to `label_embedding.pt`, a dict {dataset: (n_d, d_e) tensor} (n_d =
K_d + 1, the last row the "None" label). The state dict's keys, `module.` prefix or not:

  base.I.*            the DRN-D encoder: `base` is the Sequential of fyu/drn's DRN children
                      without avgpool and fc, so base.I is fyu/drn's layerI
  seg.J.weight/bias   the 1 x 1 head of the J-th dataset, n_J channels
  up.J.weight         its frozen bilinear x8 ConvTranspose2d (checked, not imported: the
                      model's `usss.upsample` "deconv" is the same operator)
  en_map.weight/bias  the embedding head
  en_up.weight        the embedding's frozen x8 deconvolution (checked likewise)

The J-th dataset is not the J-th on the release's command line: its `load_data` orders
the chosen datasets as its table lists them, IDD, CS, CVD, SUN, NYU_S
(`RELEASE_DATASETS`). Each domain of the config is matched to its release dataset by name
(`RELEASE_NAMES`: cityscapes = CS, idd = IDD, camvid = CVD, sunrgbd = SUN) or, for other
names, by `release_datasets`, one release name per domain in the config's order.

`import_usss_checkpoint` writes the train state (encoder, heads and embedding head from the
file, step `step`, optimiser fresh) into `workdir/checkpoints/latest/STEP`, so that
`main.py --mode eval` scores it per domain; with the label embeddings it also writes them
as `workdir/label_embeddings.npz` and puts them into the state (the config is run with
usss.label_embeddings=file and that file, as the returned report says).
"""
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddfp_jax.data.domains import domain_names
from ddfp_jax.interop.names import COLLECTIONS, StateDictMismatch, strip_module_prefix
from ddfp_jax.interop.pretrained import convert_drn_state_dict
from ddfp_jax.interop.reading import read_torch_checkpoint
from ddfp_jax.methods import label_embeddings as embeddings_lib
from ddfp_jax.methods.usss import num_classes
from ddfp_jax.models.resize import bilinear_taps

PyTree = Any
RELEASE_DATASETS = ("IDD", "CS", "CVD", "SUN", "NYU_S")   # the release's load_data order
RELEASE_NAMES = {"idd": "IDD", "cityscapes": "CS", "camvid": "CVD", "sunrgbd": "SUN"}
EMBEDDINGS_FILE = "label_embeddings.npz"


def release_datasets_of(domains: Sequence[str],
                        release_datasets: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
  """The release's dataset name of each domain (module docstring)."""
  if release_datasets:
    names = tuple(release_datasets)
    if len(names) != len(domains):
      raise ValueError(f"release_datasets names {len(names)} datasets ({', '.join(names)}) "
                       f"for the config's {len(domains)} domains ({', '.join(domains)}); give "
                       f"one per domain, in that order.")
  else:
    unknown = [d for d in domains if d not in RELEASE_NAMES]
    if unknown:
      raise ValueError(f"the domains {', '.join(unknown)} have no dataset of the release "
                       f"(it knows {', '.join(f'{k} = {v}' for k, v in RELEASE_NAMES.items())}); "
                       f"name the release's dataset of every domain with release_datasets "
                       f"(--release_datasets), e.g. CS,CVD.")
    names = tuple(RELEASE_NAMES[d] for d in domains)
  bad = [n for n in names if n not in RELEASE_DATASETS]
  if bad or len(set(names)) != len(names):
    raise ValueError(f"release_datasets must be distinct names among "
                     f"{', '.join(RELEASE_DATASETS)}; got {', '.join(names)}.")
  return names


def release_head_index(release_names: Sequence[str]) -> Tuple[int, ...]:
  """Where each dataset's head is in the release's `seg` / `up` lists: its rank among the
  chosen datasets in the release's table order."""
  ordered = sorted(release_names, key=RELEASE_DATASETS.index)
  return tuple(ordered.index(n) for n in release_names)


def bilinear_filler(channels: int, size: int) -> np.ndarray:
  """The release's `fill_up_weights` for a (channels, 1, size, size) ConvTranspose2d of
  an even kernel size (its x8 deconvolutions: 16)."""
  taps = bilinear_taps(size // 2)
  return np.broadcast_to(np.outer(taps, taps), (channels, 1, size, size)).astype(np.float32)


def _kernel(weight: np.ndarray) -> np.ndarray:
  return np.asarray(weight, np.float32).transpose(2, 3, 1, 0)   # OIHW -> HWIO


def release_usss_variables(state_dict: Mapping[str, Any], target: PyTree,
                           head_index: Sequence[int], source: str = "the state dict") -> PyTree:
  """The release's `Net` state dict -> {"params", "batch_stats"} of a
  `MultiDomainSegmenter` with the DRN-D encoder, shaped like `target` (variables or their
  `jax.eval_shape`); head d of the model is the release's `seg.{head_index[d]}`.

  Raises:
    StateDictMismatch: every missing, unexpected or mis-shaped entry, the encoder's
      (another DRN depth or width) included, and frozen upsampling kernels that are not
      the release's bilinear ones.
  """
  state_dict = strip_module_prefix(state_dict)
  encoder = {re.sub(r"^base\.(\d+)\.", r"layer\1.", k): v for k, v in state_dict.items()
             if k.startswith("base.")}
  encoder_target = {c: target[c]["encoder"] for c in COLLECTIONS}
  missing, unexpected, wrong_shape = [], [], []
  try:
    converted = convert_drn_state_dict(encoder, encoder_target, source)
  except StateDictMismatch as e:
    back = lambda names: [re.sub(r"^layer(\d+)\.", r"base.\1.", n) for n in names]
    missing, unexpected, wrong_shape = back(e.missing), back(e.unexpected), back(e.wrong_shape)
    converted = None
  params = {}
  wanted = {}
  for d, j in enumerate(head_index):
    head = target["params"][f"head_{d}"]
    wanted[f"seg.{j}.weight"] = (("params", f"head_{d}", "kernel"), head["kernel"].shape)
    wanted[f"seg.{j}.bias"] = (("params", f"head_{d}", "bias"), head["bias"].shape)
    wanted[f"up.{j}.weight"] = (None, (head["kernel"].shape[-1], 1, 16, 16))
  embedding = target["params"]["embedding"]
  wanted["en_map.weight"] = (("params", "embedding", "kernel"), embedding["kernel"].shape)
  wanted["en_map.bias"] = (("params", "embedding", "bias"), embedding["bias"].shape)
  wanted["en_up.weight"] = (None, (embedding["kernel"].shape[-1], 1, 16, 16))
  for name, (key, shape) in wanted.items():
    if name not in state_dict:
      missing.append(name)
      continue
    value = np.asarray(state_dict[name], np.float32)
    torch_shape = shape if key is None or key[-1] == "bias" else tuple(
        shape[i] for i in (3, 2, 0, 1))
    if value.shape != tuple(torch_shape):
      wrong_shape.append(f"{name} (file {value.shape}, model {tuple(torch_shape)})")
    elif key is None:
      if not np.allclose(value, bilinear_filler(shape[0], shape[2]), atol=1e-6):
        wrong_shape.append(f"{name} (not the release's frozen bilinear x8 kernel)")
    else:
      params[key] = _kernel(value) if key[-1] == "kernel" else value
  unexpected += [k for k in state_dict if not k.startswith("base.") and k not in wanted
                 and not k.endswith("num_batches_tracked")]
  if missing or unexpected or wrong_shape:
    raise StateDictMismatch(source, missing, unexpected, wrong_shape)
  out = {c: {"encoder": converted[c]} for c in COLLECTIONS}
  for (_, module, leaf), value in params.items():
    out["params"].setdefault(module, {})[leaf] = value
  return jax.tree.map(lambda v, t: jnp.asarray(v, t.dtype), out,
                      {c: dict(target[c]) for c in COLLECTIONS})


def release_label_embeddings(table: Mapping[str, Any], domains: Sequence[str],
                             release_names: Sequence[str], ks: Sequence[int], dim: int,
                             source: str = "the label embeddings") -> Dict[str, np.ndarray]:
  """`label_embedding.pt`'s {release dataset: (K + 1, D)} -> {domain: (K + 1, D)}, for
  `label_embeddings.write_embedding_file` (the reader drops the "None" row)."""
  out = {}
  for domain, name, k in zip(domains, release_names, ks):
    if name not in table:
      raise ValueError(f"{source} has no embeddings of {name} (the release's name of "
                       f"{domain}); it holds {', '.join(map(str, table)) or 'nothing'}.")
    value = np.asarray(table[name], np.float32)
    if value.shape not in ((k + 1, dim), (k, dim)):
      raise ValueError(f"{source}: {name} has shape {value.shape}; {domain} has {k} classes "
                       f"and usss.embedding_dim = {dim}, so ({k + 1}, {dim}) was expected.")
    out[domain] = value
  return out


def _model_state_dict(checkpoint: Mapping[str, Any], source: str) -> Mapping[str, Any]:
  """The state dict in `model_best.pth` (the file itself) or `checkpoint.pth.tar`."""
  if isinstance(checkpoint.get("state_dict"), Mapping):
    return checkpoint["state_dict"]
  if all(isinstance(v, np.ndarray) for v in checkpoint.values()):
    return checkpoint
  raise ValueError(f"{source} is neither the release's model state dict (model_best.pth) "
                   f"nor its checkpoint.pth.tar (no 'state_dict'; its entries: "
                   f"{sorted(map(str, checkpoint))[:10]}).")


def import_usss_checkpoint(path: str, config, workdir: str, step: int = 0,
                           label_embeddings: Optional[str] = None,
                           release_datasets: Optional[Sequence[str]] = None,
                           trust_pickle: bool = False) -> Tuple[str, Any]:
  """Converts the release's model at `path` (and its `label_embedding.pt`) into an orbax
  checkpoint of `config`'s train state in `workdir` (module docstring).

  Returns:
    (a report of what was imported, the config the checkpoint belongs to: `config` with
    usss.label_embeddings = "file" and usss.embedding_file when embeddings were given).

  Raises:
    ValueError: `config` is not a usss config with the DRN encoder, the domains do not
      name the release's datasets, `workdir` already holds checkpoints, or
      (StateDictMismatch) the file does not fit the model.
  """
  from ddfp_jax.interop.release import check_import_target, write_imported_state  # pylint: disable=g-import-not-at-top
  from ddfp_jax.training.state import create_train_state, init_variables  # pylint: disable=g-import-not-at-top
  path = str(path)
  if config.method != "usss" or config.usss.encoder != "drn":
    raise ValueError(f"{path} is the USSS release's model (a DRN-D encoder with one head per "
                     f"dataset); import it with a usss config whose usss.encoder is 'drn' "
                     f"(got method {config.method!r}, encoder "
                     f"{config.get('usss', {}).get('encoder')!r}).")
  check_import_target(config, workdir, step)
  domains, ks = domain_names(config), num_classes(config)
  names = release_datasets_of(domains, release_datasets)
  config = config.copy_and_resolve_references()
  config.model.pretrained = None
  key = jax.random.key(config.seed)
  # The model's shapes (no compilation): a file that does not fit fails before anything
  # is written.
  shapes = jax.eval_shape(lambda k: init_variables(config, k), key)
  checkpoint = read_torch_checkpoint(path, trust_pickle)
  variables = release_usss_variables(_model_state_dict(checkpoint, path), shapes,
                                     release_head_index(names), path)
  embeddings = None
  if label_embeddings:
    embeddings = release_label_embeddings(
        read_torch_checkpoint(str(label_embeddings), trust_pickle), domains, names, ks,
        config.usss.embedding_dim, str(label_embeddings))
    config.usss.label_embeddings = "file"
    config.usss.embedding_file = os.path.join(os.path.abspath(str(workdir)), EMBEDDINGS_FILE)
    os.makedirs(str(workdir), exist_ok=True)
    embeddings_lib.write_embedding_file(config.usss.embedding_file, embeddings)
  state = create_train_state(config, key, lambda _: variables)
  ckpt_dir = write_imported_state(state, config, workdir, step)
  heads = ", ".join(f"{d} = {n} ({k + 1} channels)" for d, n, k in zip(domains, names, ks))
  progress = ", ".join(f"{k} {checkpoint[k]}" for k in ("epoch", "best_acc")
                       if k in checkpoint and np.ndim(checkpoint[k]) == 0)
  report = (f"{path}: DRN-D-{config.usss.drn_depth} encoder, heads {heads}, a "
            f"{config.usss.embedding_dim}-wide embedding head"
            + (f" ({progress})" if progress else "") + f" -> {ckpt_dir}/latest/{step} "
            f"(optimiser state fresh)")
  if embeddings is not None:
    report += f"; label embeddings -> {config.usss.embedding_file}"
  return report + ".", config
