"""Every key of a ddfp-jax config with its default: DDFP on DeepLabV3+ / ResNet-101.

`configs/base.py` returns this; variant configs override a few fields. Every
hyper-parameter lives here or in a method's block (`Method.config_block`, added under
config.<method> for every method); nothing is buried in the trainer. Steps are global
optimiser steps; per-device batch sizes are multiplied by the number of devices of the
whole run.
"""
import ml_collections

from ddfp_jax.methods import METHODS


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 40_000
  config.steps_per_epoch = 500        # one pass of the unlabeled stream (set per dataset)
  # >0: train this many epochs; steps_per_epoch and total_steps are then derived when the
  # run starts, steps_per_epoch = (unlabeled examples) // (global unlabeled batch), as the
  # release's drop_last loader, so an epoch stays one pass whatever the number of devices.
  config.epochs = 0
  # Where paper and release differ the switch defaults follow the paper (true EMA teacher
  # in inference mode, perturbation of v): semi.teacher, semi.teacher_train_mode and
  # semi.site. `preset` sets all three at once when the run starts (ddfp_jax/config/presets.py):
  # "custom" keeps them as given; "paper" = ema / False / feature; "release" = shared /
  # True / classifier_input (the released code, for comparison with its numbers). A preset
  # other than "custom" wins over the three switches (the run logs what it changed).
  config.preset = "custom"            # "custom" | "paper" | "release"

  # The method trained: a key of ddfp_jax.methods.METHODS (supervised, fixmatch, random,
  # cct_noise, channel_dropout, vat, ddfp, dgcl). A config file can take it after a colon:
  # --config configs/demo.py:fixmatch.
  config.method = "ddfp"

  config.data = data = ml_collections.ConfigDict()
  data.name = "demo"                  # "demo" | "cityscapes" | "pascal" | "pascal_blended"
  data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir
  # Real datasets: the extracted download; if set and the TFDS files are not in data_dir
  # yet, process 0 prepares them there first (python -m ddfp_jax.data.prepare does the same).
  data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  # Directory with labeled.txt / unlabeled.txt in the standard format (e.g.
  # splits/cityscapes/744); if None, a split of num_labeled examples is drawn with
  # split_seed from the training set (unlabeled = the rest).
  # True: every training image is labeled (the fully supervised upper bound of a setting,
  # with method "supervised"); the split keys above are then not read.
  data.all_labeled = False
  data.split_dir = ml_collections.FieldReference(None, field_type=str)
  data.num_labeled = 0
  data.split_seed = 0
  data.num_classes = 11
  data.ignore_label = 255
  data.crop_size = 64
  data.scale_range = (0.5, 2.0)       # random rescale of the long side, x original
  data.flip_prob = 0.5                # horizontal flip of the weak view (0: never)
  data.labeled_per_device = 4
  data.unlabeled_per_device = 4
  data.eval_per_device = 8
  # Validation protocol: "whole" (full images as they are), "center_crop" (VOC, as the
  # release: a side shorter than eval_crop is padded evenly on both sides, image with 0
  # before normalisation, label with 255; then the centre eval_crop x eval_crop), or
  # "sliding_window" (Cityscapes: full images, windows of eval_window with stride
  # int(eval_stride_ratio * eval_window), softmax scores summed over windows).
  data.eval_protocol = "whole"
  data.eval_crop = 513
  data.eval_window = 769              # paper; the release uses 801
  data.eval_stride_ratio = 2 / 3
  data.eval_window_batch = 0          # windows per forward pass (0: all of a batch at once)
  # "release": windows start at 0, stride, 2*stride, ... and are cut at the image border
  # (the release's loop); "shifted": border windows move inside, all full size (mmseg/U2PL).
  data.eval_window_grid = "release"
  # Validation images (and labels, by nearest neighbour) rescaled by this factor before
  # the protocol, and scored there: USSS's release evaluates at its training resolution
  # (Cityscapes 1024 x 512, data.scale_range (0.5, 0.5)). 1: the original resolution.
  data.eval_scale = 1.0
  data.mean = (123.675, 116.28, 103.53)
  data.std = (58.395, 57.12, 57.375)
  # Strong augmentation of the unlabeled stream (on top of the weak one).
  data.color_jitter_prob = 0.8
  data.brightness = 0.5
  data.contrast = 0.5
  data.saturation = 0.5
  data.hue = 0.25
  data.grayscale_prob = 0.2
  data.blur_prob = 0.5
  data.blur_sigma = (0.1, 2.0)
  # Demo set sizes (see ddfp_jax/data/demo.py).
  data.demo_labeled = 40
  data.demo_unlabeled = 1000
  data.demo_validation = 200
  data.demo_image_size = 96
  data.demo_domain = "day"            # "day" | "night" (ddfp_jax/data/demo.py)
  data.demo_seed = 0                  # the scenes; apart from config.seed, so the set stays fixed
  data.shuffle_buffer = 0             # 0: exact per-epoch permutation (deterministic)
  data.prefetch = 2

  config.model = model = ml_collections.ConfigDict()
  model.depth = 101
  model.deep_stem = True
  model.width = 1.0
  model.output_stride = 16
  model.aspp_rates = (6, 12, 18)
  # How ASPP and the dilated backbone stages compute their dilated convolutions: "dilated"
  # | "space_to_batch" | "shifted" (same result and parameters; ddfp_jax/models/layers.py
  # ATROUS_IMPLS; benchmarks/model.py measures them), or "auto": the one known fastest on
  # the backend, else timed once at start-up (ddfp_jax/models/atrous_choice.py; the
  # trainer logs the choice and writes it to the workdir's atrous_impl.json).
  model.atrous_impl = "auto"
  # Last backbone stage's dilation grid, one factor per block: () none, (2, 2, 4) DGCL's.
  model.multi_grid = ()
  model.mixed_bn = True               # classifier-block BNs with DDFP's auxiliary set
  model.decoder = "ddfp"              # "ddfp" (release) | "reco" (CSS): models/deeplab.py
  model.projection_dim = 0            # per-pixel projection head width (DGCL: 256); 0: none
  model.projection_on = "features"    # its input: "features" v (DGCL) | "decoder_input" u (CSS)
  model.aux_head = False              # auxiliary classifier on stage 3 (DGCL, Cityscapes)
  model.dropout_rate = 0.1
  model.dtype = "float32"             # compute dtype: "float32" | "bfloat16"
  model.pretrained = ml_collections.FieldReference(None, field_type=str)

  # The semi-supervised setting every method shares (the teacher, its pseudo labels, the
  # strong view and the loss weights); each method's own keys are in its block below.
  config.semi = semi = ml_collections.ConfigDict()
  semi.threshold = 0.95               # tau: pseudo-label confidence threshold
  semi.lambda_image = 0.5             # weight of the strong-view consistency loss
  # lambda_ft: weight of the perturbed-feature loss of the feature-perturbation methods;
  # a step without a feature branch (fixmatch, or before the branch starts) gives the
  # strong view lambda_image + lambda_feature, as the release does.
  semi.lambda_feature = 0.5
  semi.site = "feature"               # where feature perturbations go: "feature" (paper:
                                      # perturb v) | "classifier_input" (release: perturb u,
                                      # the classifier block after it)
  semi.cutmix_prob = 0.5
  semi.ema_decay = 0.999
  semi.teacher = "ema"                # "ema" (paper) | "shared" (release: teacher = student)
                                      # | "shared_first_epoch" (DGCL: student, then EMA)
  semi.teacher_train_mode = False     # release: True (dropout on, batch statistics)

  # Each method's own block, config.<method name> (ddfp_jax/methods/, one module each).
  for name, method in METHODS.items():
    block = method.config_block()
    if block is not None:
      config[name] = block

  config.optim = optim = ml_collections.ConfigDict()
  optim.name = "sgd"                  # "sgd" (papers) | "adamw" (ddfp_jax/training/optim.py)
  optim.learning_rate = 0.001         # base LR for the reference global batch below
  optim.reference_batch = 16          # labeled images per step the base LR was set for
  optim.lr_scaling = "linear"         # "linear" | "none": how LR follows the global batch
  optim.momentum = 0.9
  optim.nesterov = False              # Nesterov momentum for "sgd" (CSS's release)
  optim.weight_decay = 1e-4
  optim.poly_power = 0.9
  optim.decoder_lr_mult = 10.0

  config.schedule = schedule = ml_collections.ConfigDict()
  schedule.sup_only_epochs = 1        # supervised warm-up
  schedule.flow_start_epoch = 1       # DDFP's flow trains from this epoch
  # Feature perturbations (every feature-perturbation method) run from the epoch after
  # the flow starts (release), so all of them perturb from the same step.

  config.train = train = ml_collections.ConfigDict()
  train.log_every = 50
  train.eval_every = 1000
  train.checkpoint_every = 1000
  train.keep_checkpoints = 2
  train.eval_teacher = True
  # At every evaluation, this many validation images as TensorBoard pictures (ground
  # truth, predictions, confident pseudo labels, the method's density maps); 0: none.
  train.num_images = 4
  train.steps_this_run = 0            # >0: stop (with a checkpoint) after this many steps,
                                      # for time-limited jobs; resume with the same command
  # Printed after the final mIoU line: where this setting's comparison of methods lives
  # (the demo config points at its results table). Empty: nothing more is printed.
  train.final_note = ""
  return config
