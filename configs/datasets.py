"""Dataset-level settings the methods' table configs share (configs/<method>/tables.py):
the dataset, its classes, the training crop, the validation protocol and the SGD
learning rate its papers train with. Each function sets them on a config in place."""
import ml_collections


def pascal(config: ml_collections.ConfigDict) -> None:
  """Pascal VOC 2012 classic: 21 classes, crop 513, centre-crop validation; LR 0.001
  with the decoder's x10 (the U2PL-family releases)."""
  config.data.name = "pascal"
  config.data.num_classes = 21
  config.data.crop_size = 513
  config.data.eval_protocol = "center_crop"
  config.data.eval_crop = 513
  config.optim.learning_rate = 0.001
  config.optim.decoder_lr_mult = 10.0


def cityscapes(config: ml_collections.ConfigDict, eval_window: int) -> None:
  """Cityscapes: 19 classes, crop 769, sliding-window validation over full 1024 x 2048
  images (windows of `eval_window`, stride 2/3 of it); LR 0.01, decoder x1."""
  config.data.name = "cityscapes"
  config.data.num_classes = 19
  config.data.crop_size = 769
  config.data.eval_protocol = "sliding_window"
  config.data.eval_window = eval_window
  config.data.eval_stride_ratio = 2 / 3
  config.data.eval_per_device = 1       # full 1024x2048 images
  config.optim.learning_rate = 0.01
  config.optim.decoder_lr_mult = 1.0
