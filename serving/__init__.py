"""Serving side of effnet-trainer: export signatures and the TF Serving / Vertex AI clients.

It stands on effnet_common (decode, fileio, versions, the command line) and never imports
trainer: the trainer imports serving.signatures to export, not the other way round.
"""
import effnet_common  # noqa: F401  # TF_USE_LEGACY_KERAS before TensorFlow loads
