"""Sizes the tests share: small enough for a 2-core CPU, large enough for B0's five downsamplings."""

IMAGE_SIZE = 64  # the input side of the B0 runs on the demo images
