"""effnet-trainer: fine-tune a pretrained EfficientNet on your images and serve it.

Importing it changes nothing in the process but TF_USE_LEGACY_KERAS (through effnet_common:
tf-keras is the Keras this package is written for). Commands prepare their process themselves
(effnet_common.process: TensorFlow's start-up lines, gs:// defaults).
"""
import effnet_common  # noqa: F401  # TF_USE_LEGACY_KERAS before TensorFlow loads

__version__ = "0.1.0"
