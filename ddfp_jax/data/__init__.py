"""Input pipelines: the embedded demo set, image augmentation and the batch iterators."""
