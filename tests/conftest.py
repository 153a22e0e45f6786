"""Shared fixtures: demo images, prepared TFRecords and a small pretrained backbone file.

Everything is tiny by design (B0, 64 px, 4 classes, a few steps) and made once per session.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import trainer  # noqa: E402,F401

IMAGE_SIZE = 64

# The GCS test front (gcs / gcs_bucket fixtures); it sets TF's GCS_* variables before
# TensorFlow is first imported, so nothing above may import TensorFlow.
pytest_plugins = ["tests.testing.gcs_front"]


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory):
    """A folder of the demo's 4 shape classes, 24 JPEGs each, 96 px."""
    from trainer import demo
    root = tmp_path_factory.mktemp("demo_images")
    demo.write_images(str(root), task="shapes", per_class=24, size=96, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def demo_records(demo_images, tmp_path_factory):
    """The demo images prepared as TFRecord shards (train/validation), labels.txt, dataset.json."""
    from trainer import prepare
    out = tmp_path_factory.mktemp("demo_records")
    prepare.prepare(input_dir=demo_images, output_dir=str(out), validation_fraction=0.25, num_shards=2, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def pretrained_weights():
    """Notop B0 weights that learned a different synthetic task (cached across sessions)."""
    from tests.testing import pretrained
    return pretrained.pretrained_b0_weights()
