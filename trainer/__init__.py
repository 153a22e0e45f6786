"""effnet-trainer: fine-tune a pretrained EfficientNet on your images and serve it.

`import trainer` sets TF_USE_LEGACY_KERAS through effnet_common (tf-keras is the Keras this
package is written for) and nothing else.
"""
import os

import effnet_common  # noqa: F401  # TF_USE_LEGACY_KERAS before TensorFlow loads

__version__ = "0.1.0"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from effnet_common import gcs as _gcs  # noqa: E402  # light: no TensorFlow import
from effnet_common import quiet as _quiet  # noqa: E402

_quiet.install()  # TensorFlow's C++ start-up lines, dropped at its first import

_gcs.apply_tf_gcs_defaults()  # GCS_* tuning variables are read when TensorFlow is imported
