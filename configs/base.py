"""Shared defaults for every ddfp-jax config: DDFP on DeepLabV3+ / ResNet-101.

Variant configs import this module and override a few fields. Every hyper-parameter of the
method lives here; nothing is buried in the trainer. Steps are global optimiser steps;
per-device batch sizes are multiplied by the number of devices of the whole run.
"""
import ml_collections


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
  # in inference mode, perturbation of v): ddfp.teacher, ddfp.teacher_train_mode and
  # ddfp.site. `preset` sets all three at once when the run starts (ddfp_jax/presets.py):
  # "custom" keeps them as given; "paper" = ema / False / feature; "release" = shared /
  # True / classifier_input (the released code, for comparison with its numbers). A preset
  # other than "custom" wins over the three switches (the run logs what it changed).
  config.preset = "custom"            # "custom" | "paper" | "release"

  config.data = data = ml_collections.ConfigDict()
  data.name = "demo"                  # "demo" | "cityscapes" | "pascal" | "pascal_blended"
  data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir
  # Real datasets: the extracted download; if set and the TFDS files are not in data_dir
  # yet, process 0 prepares them there first (python -m ddfp_jax.data.prepare does the same).
  data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  # Directory with labeled.txt / unlabeled.txt in the standard format (e.g.
  # splits/cityscapes/744); if None, a split of num_labeled examples is drawn with
  # split_seed from the training set (unlabeled = the rest).
  data.split_dir = ml_collections.FieldReference(None, field_type=str)
  data.num_labeled = 0
  data.split_seed = 0
  data.num_classes = 11
  data.ignore_label = 255
  data.crop_size = 64
  data.scale_range = (0.5, 2.0)       # random rescale of the long side, x original
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
  data.demo_seed = 0                  # the scenes; apart from config.seed, so the set stays fixed
  data.shuffle_buffer = 0             # 0: exact per-epoch permutation (deterministic)
  data.prefetch = 2

  config.model = model = ml_collections.ConfigDict()
  model.depth = 101
  model.deep_stem = True
  model.width = 1.0
  model.output_stride = 16
  model.aspp_rates = (6, 12, 18)
  # How ASPP computes its dilated convolutions: "dilated" | "space_to_batch" (same result
  # and parameters; ddfp_jax/layers.py ATROUS_IMPLS, benchmarks/model.py measures both).
  model.atrous_impl = "dilated"
  model.dropout_rate = 0.1
  model.dtype = "float32"             # compute dtype: "float32" | "bfloat16"
  model.pretrained = ml_collections.FieldReference(None, field_type=str)

  config.flow = flow = ml_collections.ConfigDict()
  flow.num_blocks = 2
  flow.hidden = 256
  flow.clamp = 2.0
  flow.learn_means = True
  flow.num_samples = 20_480           # pixels per step the flow trains on
  flow.noise_std = 0.05               # Gaussian noise added to those features
  flow.learning_rate = 1e-3
  flow.b1 = 0.5
  flow.b2 = 0.9
  flow.grad_clip = 50.0
  flow.final_lr_ratio = 0.01          # LR x 0.01^(1/epochs) after every epoch

  config.ddfp = ddfp = ml_collections.ConfigDict()
  ddfp.threshold = 0.95               # tau: pseudo-label confidence threshold
  ddfp.lambda_image = 0.5             # weight of the strong-view consistency loss
  ddfp.lambda_feature = 0.5           # lambda_ft: weight of the perturbed-feature loss
  ddfp.perturbation = "density_descending"  # see ddfp_jax/perturbations.py KINDS
  ddfp.site = "feature"               # "feature" (paper: perturb v) | "classifier_input"
                                      # (release: perturb u, density after the block)
  ddfp.eps = 4.0
  ddfp.uniform_range = 0.3
  ddfp.channel_dropout_rate = 0.5
  ddfp.vat_xi = 1e-6
  ddfp.cutmix_prob = 0.5
  ddfp.ema_decay = 0.999
  ddfp.teacher = "ema"                # "ema" (paper) | "shared" (release: teacher = student)
  ddfp.teacher_train_mode = False     # release: True (dropout on, batch statistics)
  ddfp.semi_supervised = True         # False: supervised only on the labeled subset

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 0.001         # base LR for the reference global batch below
  optim.reference_batch = 16          # labeled images per step the base LR was set for
  optim.lr_scaling = "linear"         # "linear" | "none": how LR follows the global batch
  optim.momentum = 0.9
  optim.weight_decay = 1e-4
  optim.poly_power = 0.9
  optim.decoder_lr_mult = 10.0

  config.schedule = schedule = ml_collections.ConfigDict()
  schedule.sup_only_epochs = 1        # supervised warm-up
  schedule.flow_start_epoch = 1       # flow trains from this epoch
  # perturbation is used from the epoch after the flow starts (release).

  config.train = train = ml_collections.ConfigDict()
  train.log_every = 50
  train.eval_every = 1000
  train.checkpoint_every = 1000
  train.keep_checkpoints = 2
  train.eval_teacher = True
  train.eval_flow = False             # FlowGMM classification of teacher features
  train.steps_this_run = 0            # >0: stop (with a checkpoint) after this many steps,
                                      # for time-limited jobs; resume with the same command
  return config
