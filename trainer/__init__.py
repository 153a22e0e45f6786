"""effnet-trainer: fine-tune a pretrained EfficientNet on your images and serve it.

Keras 2 (tf-keras) is the Keras this package is written for, so the switch that makes
`tf.keras` mean tf-keras must be set before TensorFlow is first imported.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"

from trainer import gcs as _gcs  # noqa: E402  # light: no TensorFlow import
from trainer import quiet as _quiet  # noqa: E402

_quiet.install()  # TensorFlow's C++ start-up lines, dropped at its first import

_gcs.apply_tf_gcs_defaults()  # GCS_* tuning variables are read when TensorFlow is imported
