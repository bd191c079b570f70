"""USSS's dataset pairs (Kalluri et al., ICCV 2019; spec sections 4, 5 and 7).

Each per-pair config (configs/usss/cityscapes_camvid_50.py, ...) is one call of `pair`
with the two datasets and N, the labeled images per dataset (a seeded, sorted draw of N
from each training set, `data.split_seed`; all training images are the unlabeled set, as
the release). Variants (`--config configs/usss/PAIR.py:VARIANT`):

  usss        (default) alpha = beta = 1 against class centroids: a stage 1 of 100
              supervised epochs (the last collects the centroids), then 200 epochs of
              both entropies (the paper's full model; its stage 1 is a separate run)
  random      the release: alpha = beta = 1 against fixed random label embeddings, 200
              epochs, no stage 1
  cross       alpha = 1, beta = 0 (the paper's "Univ-cross", as far as it is known)
  joint       alpha = beta = 0: both datasets, supervised (the joint baseline), 200 epochs
  <dataset>   supervised on that dataset alone (e.g. :camvid), 200 epochs
  finetune_<dataset>  supervised on that dataset alone, started from another run's
              encoder and embedding head (the fine-tuning baseline): pass that run's
              workdir, --config.usss.init_from=DIR (e.g. the :cityscapes run's)

Shared, from the release (spec section 5): DRN-D-22 encoder (the depth the paper used is
unknown; usss.drn_depth), 100-wide embedding head, heads with the "None" channel, SGD
(momentum 0.9, weight decay 1e-4) at LR 0.001 for a labeled batch of 8 per dataset, poly
0.9; an epoch is ceil(N / 8) steps (one pass of the labeled lists, the release's n_iters),
200 of them. Resolution: Cityscapes and IDD are halved (data.scale_range (0.5, 0.5): the
release's 1024 x 512 for 2048 x 1024 Cityscapes; IDD's 1920 x 1080 images become
960 x 540 where the release stretches them to 1024 x 512) with random 512 crops; CamVid
(480 x 360) and SUN RGB-D (about 640 x 480) keep their size, cropped to 480 and 640
squares (the release takes whole images; the padding is ignored). Validation: the whole
validation set of each dataset at the training resolution (data.eval_scale; the release
scores its first 100 images), checkpoints chosen by the mean of the two mIoUs.

Per dataset, give the extracted download and the TFDS directory:
  python main.py --config configs/usss/cityscapes_camvid_100.py --workdir DIR \
    --config.data.data_dir=TFDS_DIR \
    --config.usss.domain_data.cityscapes.manual_dir=CITYSCAPES_DIR \
    --config.usss.domain_data.camvid.manual_dir=CAMVID_DIR

Known differences from the release (docs/methods.md, "USSS"): one unlabeled batch per
step and dataset (4 images per device) stands for the release's U_d accumulated batches;
inputs are ImageNet-normalised (the release feeds [0, 1] images to ImageNet DRN weights);
labeled subsets are seeded draws, not glob order. Published numbers: the paper's tables
were not available (../shared sibling-results.md); only the ordering is known (USSS >
joint > supervised and fine-tuning at 100 labels on every pair). The DRN-D ImageNet
weights the paper starts from: --config.model.pretrained=drn_d_22-4bd2f8ea.pth (fyu/drn's
file, docs/models.md); without it the encoder trains from scratch.
Hardware and time: not measured (no GPU run yet).
"""
import math

import ml_collections

from configs import base

LABELED_BATCH = 8        # per dataset and step, the release's --batch-size
EPOCHS = 200             # the release README's --num-epochs
STAGE1_EPOCHS = 100      # "usss" only: the supervised stage before the centroids

# Each dataset's data settings (keys of config.data), as its domain's domain_data entry.
DATASETS = {
    "cityscapes": {"name": "cityscapes", "num_classes": 19, "scale_range": (0.5, 0.5),
                   "crop_size": 512, "eval_scale": 0.5},
    "camvid": {"name": "camvid", "num_classes": 11, "scale_range": (1.0, 1.0),
               "crop_size": 480, "eval_scale": 1.0},
    "idd": {"name": "idd", "num_classes": 26, "scale_range": (0.5, 0.5), "crop_size": 512,
            "eval_scale": 0.5},
    "sunrgbd": {"name": "sunrgbd", "num_classes": 37, "scale_range": (1.0, 1.0),
                "crop_size": 640, "eval_scale": 1.0},
}

def variants(datasets) -> tuple:
  return ("usss", "random", "cross", "joint", *datasets,
          *(f"finetune_{d}" for d in datasets))


def _domain(dataset: str, num_labeled: int) -> dict:
  return {**DATASETS[dataset], "num_labeled": num_labeled,
          "manual_dir": ml_collections.FieldReference(None, field_type=str)}


def pair(first: str, second: str, num_labeled: int,
         variant: str = "usss") -> ml_collections.ConfigDict:
  """The pair's config (module docstring) for `variant`."""
  names = (first, second)
  if variant not in variants(names):
    raise ValueError(f"the USSS pair configs take one of {', '.join(variants(names))} "
                     f"after the file name (e.g. configs/usss/{first}_{second}_"
                     f"{num_labeled}.py:joint), got {variant!r}.")
  config = base.get_config()
  config.method = "usss"
  u = config.usss
  u.domains = ",".join(names)
  u.domain_data = {d: _domain(d, num_labeled) for d in names}
  u.encoder = "drn"
  u.drn_depth = 22
  u.embedding_dim = 100
  u.none_class = True
  u.upsample = "deconv"                 # the release's frozen bilinear x8 deconvolution
  config.data.labeled_per_device = LABELED_BATCH // 4   # 4 devices: 8 per dataset
  config.data.unlabeled_per_device = 4
  config.data.eval_per_device = 1
  config.data.eval_protocol = "whole"
  config.data.flip_prob = 0.5           # the release's only augmentation besides resizing
  config.train.num_images = 0           # the training pictures show one label space
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.learning_rate = 0.001
  config.optim.decoder_lr_mult = 1.0
  config.optim.reference_batch = LABELED_BATCH
  config.optim.lr_scaling = "linear"
  config.epochs = 0
  config.steps_per_epoch = math.ceil(num_labeled / LABELED_BATCH)
  epochs = EPOCHS
  if variant == "usss":
    u.alpha, u.beta, u.label_embeddings = 1.0, 1.0, "centroids"
    config.schedule.sup_only_epochs = STAGE1_EPOCHS
    u.collect_epochs = 1
    epochs += STAGE1_EPOCHS
  else:
    config.schedule.sup_only_epochs = 0
    u.label_embeddings = "random"
    u.alpha, u.beta = {"random": (1.0, 1.0), "cross": (1.0, 0.0)}.get(variant, (0.0, 0.0))
    single = variant.replace("finetune_", "")
    if single in names:
      u.domains = single
    if variant.startswith("finetune_"):
      # No default: the run refuses to start until --config.usss.init_from names one.
      u.init_from = ml_collections.FieldReference(None, field_type=str)
  config.total_steps = epochs * config.steps_per_epoch
  config.train.log_every = 50
  config.train.eval_every = 5 * config.steps_per_epoch   # the release: every 5th epoch
  config.train.checkpoint_every = 5 * config.steps_per_epoch
  return config
