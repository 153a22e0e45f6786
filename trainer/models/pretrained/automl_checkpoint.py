"""ImageNet weights of EfficientNet-Lite3/4: Google's official TF checkpoints, downloaded.

No PyPI package ships Lite3 or Lite4 (see `pretrained`), so `--weights=imagenet` for them means
the checkpoints of the EfficientNet-Lite release (tensorflow/tpu models/official/efficientnet/
lite/README.md): one tarball per model at `URL`, unpacking to a folder named after the model
that holds a TF1 Saver checkpoint (and .tflite files, unused here). It is fetched once with
tf_keras' get_file into CACHE/downloads/automl (trainer.pretrained's cache folder); offline, it cannot be had.

Variable names are those of that release's efficientnet_model.py (tf.layers named by call order
inside `tf.variable_scope`s; the eval BatchNormalization is pinned to `tpu_batch_normalization`),
which google/automl's efficientdet/backbone/efficientnet_model.py spells out as explicit names:
the model scope `efficientnet-liteN/`, then `stem/conv2d/kernel`,
`stem/tpu_batch_normalization/{gamma,beta,moving_mean,moving_variance}`, per block `blocks_{i}/`
`conv2d` (expand), `tpu_batch_normalization`, `depthwise_conv2d/depthwise_kernel`,
`tpu_batch_normalization_1`, `conv2d_1` (project), `tpu_batch_normalization_2`. A block without
expansion (ratio 1) lacks the first pair, so its suffixes shift down: depthwise BN
`tpu_batch_normalization`, project `conv2d`, its BN `tpu_batch_normalization_1`. Last
`head/conv2d/kernel` and `head/tpu_batch_normalization` (`head/dense` is the 1000-class
classifier, not part of a notop backbone). Kernels are HWIO and depthwise kernels (h, w, C, 1),
as in Keras, so nothing is transposed.

Training kept an exponential moving average of every weight and BN statistic, saved as
`<name>/ExponentialMovingAverage`; the release's evaluation (utils.EvalCkptDriver.restore_model)
restores those by default, so they are preferred wherever present.
"""
from __future__ import annotations

import glob
import os
from typing import Iterator, Optional, Tuple

from effnet_common import flagutil
from effnet_common.errors import WeightsError
from trainer.models import lite

URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/{backbone}.tar.gz"
EMA_SUFFIX = "/ExponentialMovingAverage"
_BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras' BatchNormalization weight order


def download(backbone: str, *, cache_dir: str) -> str:
    """The checkpoint prefix of the backbone's official ImageNet checkpoint, downloaded and
    unpacked on first use, read from the cache afterwards (so a warm cache works offline).

    Raises:
      WeightsError: when the download or unpacking fails, saying how to do without it.
    """
    if backbone not in lite.PARAMS:
        raise WeightsError(f"no official TF checkpoint for {backbone}; use one of {', '.join(lite.PARAMS)}")
    folder = os.path.join(cache_dir, "downloads", "automl")
    prefix = _checkpoint_prefix(os.path.join(folder, backbone))
    if prefix:
        return prefix
    url = URL.format(backbone=backbone)
    try:
        import tf_keras  # pylint: disable=import-outside-toplevel
        tf_keras.utils.get_file(f"{backbone}.tar.gz", url, extract=True, cache_subdir="automl",
                                cache_dir=os.path.join(cache_dir, "downloads"))
    except Exception as e:  # pylint: disable=broad-except  # offline, HTTP errors, a truncated tarball
        raise WeightsError(_download_failed(backbone, url, f"{type(e).__name__}: {flagutil.one_line(e, limit=200, first_line=True)}")) from e
    prefix = _checkpoint_prefix(os.path.join(folder, backbone))
    if not prefix:
        raise WeightsError(_download_failed(backbone, url, f"no checkpoint in {folder}/{backbone}"))
    return prefix


def load_tf_checkpoint(backbone, prefix: str, *, source: str) -> None:
    """Sets a Lite backbone's weights from an official EfficientNet-Lite TF checkpoint, the
    moving-average (EMA) value of each variable when the checkpoint has one.

    Raises:
      WeightsError: naming the checkpoint that cannot be read, or the first variable that is
        missing or has the wrong shape.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise WeightsError(f"cannot read {source} as a TF checkpoint ({type(e).__name__}: "
                                      f"{flagutil.one_line(e, limit=200, first_line=True)}); pass the prefix of an official {backbone.name} "
                                      f"checkpoint (e.g. DIR/model.ckpt)") from e
    shapes = reader.get_variable_to_shape_map()
    for names, layer_name in _layer_map(backbone.name):
        layer = backbone.get_layer(layer_name)
        values = []
        for name, weight in zip(names, layer.weights):
            key = name + EMA_SUFFIX if name + EMA_SUFFIX in shapes else name
            if key not in shapes:
                raise WeightsError(f"{source} has no {name}, which {backbone.name} needs; pass the "
                                              f"official {backbone.name} checkpoint")
            if tuple(shapes[key]) != tuple(weight.shape):
                raise WeightsError(f"{source}: {key} has shape {tuple(shapes[key])} but {backbone.name}'s "
                                              f"{weight.name} has {tuple(weight.shape)}; pass the official "
                                              f"{backbone.name} checkpoint")
            values.append(reader.get_tensor(key))
        layer.set_weights(values)


def _layer_map(backbone: str) -> Iterator[Tuple[Tuple[str, ...], str]]:
    """(checkpoint variable names in the Keras layer's weight order, Keras layer), in order."""
    def conv(scope: str, name: str = "conv2d", kernel: str = "kernel"):
        return (f"{backbone}/{scope}/{name}/{kernel}",)

    def bn(scope: str, index: int = 0):
        suffix = f"_{index}" if index else ""
        return tuple(f"{backbone}/{scope}/tpu_batch_normalization{suffix}/{p}" for p in _BN_PARTS)

    yield conv("stem"), "stem_conv"
    yield bn("stem"), "stem_bn"
    for index, block in enumerate(lite.blocks(backbone)):
        scope, k = f"blocks_{index}", f"{block.name}_"
        shift = 0 if block.expand == 1 else 1  # the expand conv and its BN take the unsuffixed names
        if shift:
            yield conv(scope), f"{k}expand_conv"
            yield bn(scope), f"{k}expand_bn"
        yield conv(scope, "depthwise_conv2d", "depthwise_kernel"), f"{k}dwconv"
        yield bn(scope, shift), f"{k}bn"
        yield conv(scope, "conv2d_1" if shift else "conv2d"), f"{k}project_conv"
        yield bn(scope, shift + 1), f"{k}project_bn"
    yield conv("head"), "top_conv"
    yield bn("head"), "top_bn"


def _checkpoint_prefix(folder: str) -> Optional[str]:
    """The checkpoint in an unpacked release folder: the one its `checkpoint` file names, else
    the only one there; None when there is none."""
    if not os.path.isdir(folder):
        return None
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    latest = tf.train.latest_checkpoint(folder)
    if latest:
        return latest
    indexes = sorted(glob.glob(os.path.join(folder, "*.index")))
    return indexes[-1][:-len(".index")] if indexes else None


def _download_failed(backbone: str, url: str, why: str) -> str:
    return (f"--weights=imagenet for {backbone} downloads {url}, which failed ({why}); offline, stage its notop "
            f"weights file (backbone.save_weights format) and pass --weights=PATH or --weights=gs://..., or use "
            "efficientnet-lite0, -lite1 or -lite2, whose weights ship on PyPI")
