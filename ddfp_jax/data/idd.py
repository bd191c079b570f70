"""IDD, the India Driving Dataset (segmentation part), as a TFDS builder reading the user's
extracted files, with the 26 level-3 classes.

Files, under the manual dir DIR:

    DIR/leftImg8bit/{train,val}/<seq>/<frame>_leftImg8bit.png
    DIR/gtFine/{train,val}/<seq>/<frame>_gtFine_labellevel3Ids.png

The download holds polygons (`*_gtFine_polygons.json`); the level-3 label PNGs are made
from them by the AutoNUE scripts (`preperation/createLabels.py --id-type level3Id` of
github.com/AutoNUE/public-code). Their values are the level-3 ids 0..25 and 255 for the
void classes, stored unchanged (255 = ignore).

Examples are named `<seq>/<frame>` (frame names repeat across sequences) and written in
sorted name order; the builder's metadata records that order per split. Every training
image is kept: the USSS release reads only the first 4000 of a directory listing.
"""

from ddfp_jax.data.segmentation_info import (IGNORE_LABEL, FilesBuilder, label_coding,
                                             paired_files_layout)

NUM_CLASSES = 26
# By level-3 id. Id 4 also holds person: AutoNUE's table merges person and animal at
# level 3; the names follow the USSS release.
CLASS_NAMES = (
    "road", "drivable fallback", "sidewalk", "non-drivable fallback", "animal", "rider",
    "motorcycle", "bicycle", "autorickshaw", "car", "truck", "bus", "vehicle fallback",
    "curb", "wall", "fence", "guard rail", "billboard", "traffic sign", "traffic light",
    "pole", "obs-str-bar-fallback", "building", "bridge", "vegetation", "sky")
# builder split -> (image folder, label folder)
FOLDERS = {"train": ("leftImg8bit/train", "gtFine/train"),
           "validation": ("leftImg8bit/val", "gtFine/val")}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labellevel3Ids.png"

PREPARE_HELP = (
    "To get it: register at https://idd.insaan.iiit.ac.in/ and download the IDD "
    "segmentation archive (IDD 20k, part I), extract it into a directory DIR (which then "
    "holds leftImg8bit/ and gtFine/), make the level-3 label PNGs with the AutoNUE scripts "
    "(`git clone https://github.com/AutoNUE/public-code && python "
    "public-code/preperation/createLabels.py --datadir DIR --id-type level3Id`, which "
    "writes *_gtFine_labellevel3Ids.png next to the polygons), then run `python -m "
    "ddfp_jax.data.prepare --dataset idd --manual_dir DIR --data_dir TFDS_DIR`.")
EXPECTED_LAYOUT = (
    "DIR/leftImg8bit/{train,val}/<seq>/<frame>_leftImg8bit.png with the matching "
    "DIR/gtFine/{train,val}/<seq>/<frame>_gtFine_labellevel3Ids.png, e.g. "
    "leftImg8bit/train/201/frame0029_leftImg8bit.png and "
    "gtFine/train/201/frame0029_gtFine_labellevel3Ids.png")

# Level-3 PNG -> class map: 0..25 and 255 kept, anything else a LabelError naming the
# file.
LABELS = label_coding(
    {**{c: c for c in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL}, "IDD level-3",
    f"IDD level-3 id (0..{NUM_CLASSES - 1}, or {IGNORE_LABEL} for void)",
    "Make the *_gtFine_labellevel3Ids.png files with the AutoNUE scripts "
    "(preperation/createLabels.py --id-type level3Id) and use them unchanged.")


# The examples of each split, paired by name and sorted, and their counts (see
# `paired_files_layout`).
find_examples, check_layout = paired_files_layout(
    "IDD", FOLDERS, IMAGE_SUFFIX, LABEL_SUFFIX, "seq", EXPECTED_LAYOUT, PREPARE_HELP)


class DdfpIdd(FilesBuilder):
  """IDD segmentation, level-3 ids: all train and validation images, 26 classes."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Register at https://idd.insaan.iiit.ac.in/, download the IDD segmentation archive "
      "and extract it into the manual_dir (leftImg8bit/, gtFine/). Then make the level-3 "
      "labels with `python preperation/createLabels.py --datadir MANUAL_DIR --id-type "
      "level3Id` from https://github.com/AutoNUE/public-code.")
  HOMEPAGE = "https://idd.insaan.iiit.ac.in/"

  _find_examples = staticmethod(find_examples)
  _read_label = staticmethod(LABELS.read)
