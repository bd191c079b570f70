"""The TFDS feature layout shared by the real-dataset builders (Cityscapes, Pascal VOC)."""
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ddfp_jax.data.errors import LayoutError


def segmentation_info(builder: tfds.core.GeneratorBasedBuilder, image_format: str,
                      homepage: str, description: str) -> tfds.core.DatasetInfo:
  """Image (original bytes, not re-encoded), uint8 label map (PNG), and the example id.

  Examples are written in sorted-id order and the ids are recorded in the metadata
  (`names[split][i]` is example i), so split lists can select examples by index.
  """
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                       encoding_format=image_format),
          # Class ids (255 = ignore); PNG keeps full-size label maps a few KB each.
          "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                       encoding_format="png"),
          "name": tfds.features.Text(),
      }),
      supervised_keys=("image", "label"),
      homepage=homepage,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
  )


def record_names(info: tfds.core.DatasetInfo, examples) -> None:
  """Stores each split's example ids, in the order they are written, in the metadata."""
  info.metadata["names"] = {split: [e.name for e in files] for split, files in examples.items()}


def generate_examples(files, read_label):
  """Yields (id, features) for examples with `.image`, `.label`, `.name`; `read_label`
  turns a label file into an (H, W) uint8 class map. Image and label must agree in size."""
  for example in files:
    label = read_label(example.label)
    with Image.open(example.image) as image:
      size = image.size
    if size != (label.shape[1], label.shape[0]):
      raise LayoutError(f"{example.image} is {size[0]}x{size[1]} but its label "
                        f"{example.label} is {label.shape[1]}x{label.shape[0]}.")
    yield example.name, {"image": example.image, "label": label[..., None],
                         "name": example.name}
