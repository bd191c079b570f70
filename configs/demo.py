r"""DDFP on the embedded digit-scenes demo set: runs anywhere, CPU included.

Command:
  python main.py --config configs/demo.py --workdir /tmp/ddfp_demo

Scenes of upscaled handwritten digits (scikit-learn's bundled set) on textured
backgrounds, 11 classes (background + 10 digits), 40 labeled and 1000 unlabeled scenes,
200 validation scenes from other digit samples. A width-1/4 ResNet-18 DeepLabV3+ at crop
64. Hardware and time: see the README's demo table (2-core CPU).
"""
from configs import base


def get_config():
  config = base.get_config()
  config.total_steps = 600
  config.steps_per_epoch = 100
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
  config.flow.hidden = 64
  config.flow.num_samples = 4096
  config.ddfp.threshold = 0.9
  config.optim.learning_rate = 0.01
  config.optim.reference_batch = 8
  config.optim.decoder_lr_mult = 1.0
  config.schedule.sup_only_epochs = 1
  config.schedule.flow_start_epoch = 1
  config.train.log_every = 20
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  return config
