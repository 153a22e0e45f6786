"""Networks: the classifier built on a registered backbone, the fine-tuning rules, weights files,
numerics (mixed precision), EfficientNet-Lite and its pretrained ImageNet weights
(trainer.models.pretrained)."""
