"""The validation protocols the input pipeline and the evaluation both know by name."""

# "whole": full images as they are; "center_crop": VOC's padded centre crop;
# "sliding_window": Cityscapes' windows over full images (configs/base.py, data.eval_*).
PROTOCOLS = ("whole", "center_crop", "sliding_window")
# Where sliding windows start (data.eval_window_grid).
GRID_RULES = ("release", "shifted")
