"""The base that trainer/ and serving/ both stand on: files (local or gs://), Cloud Storage,
image decoding and crops, export versions, typed user errors and the command line's shared
parts. It imports neither trainer nor serving, so every import arrow points down to it.

Keras 2 (tf-keras) is the Keras this project is written for, and the `efficientnet` package
builds its networks from `tensorflow.keras`, so the switch that makes `tensorflow.keras` mean
tf-keras must be set before TensorFlow is first imported: it is the one environment variable
an import sets (setdefault: a user's own choice wins).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
