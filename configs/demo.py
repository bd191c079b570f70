r"""DDFP on the embedded digit-scenes demo set: runs anywhere, CPU included.

Command:
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo

Scenes of upscaled handwritten digits (scikit-learn's bundled set) on textured
backgrounds, 11 classes (background + 10 digits), 40 labeled and 1000 unlabeled scenes,
200 validation scenes from other digit samples. A width-1/4 ResNet-18 DeepLabV3+ trained
from scratch at crop 64, 2500 steps: 1 warm-up epoch, the flow from epoch 1, the
density-descending perturbation from epoch 2. Hardware, time and the mIoU it reaches:
README, "Demo results" (made by `python -m ddfp_jax.tools.demo_table`).
"""
from configs import base


def get_config(method: str = "ddfp"):
  """`method`: the part after the colon of --config configs/demo.py:METHOD."""
  config = base.get_config()
  config.method = method
  config.total_steps = 2500
  config.steps_per_epoch = 125        # one pass over the 1000 unlabeled scenes
  config.data.name = "demo"
  config.data.num_classes = 11
  config.data.crop_size = 64
  config.data.labeled_per_device = 8
  config.data.unlabeled_per_device = 8
  config.data.eval_per_device = 25
  config.model.depth = 18
  config.model.deep_stem = True
  config.model.width = 0.25
  config.model.output_stride = 16
  config.model.aspp_rates = (2, 4, 6)
  config.ddfp.flow.hidden = 64
  config.ddfp.flow.num_samples = 4096
  config.semi.threshold = 0.9
  # The README's demo table was made with the release's perturbation site (and the
  # paper's teacher): a mix of the two, so the preset stays "custom".
  config.preset = "custom"
  config.semi.site = "classifier_input"
  config.optim.learning_rate = 0.05
  config.optim.reference_batch = 8
  config.optim.decoder_lr_mult = 1.0
  config.schedule.sup_only_epochs = 1
  config.schedule.flow_start_epoch = 1
  config.train.log_every = 125
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
