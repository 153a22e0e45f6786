"""Package for `python -m trainer.task` on Vertex AI's prebuilt TensorFlow containers."""
import re
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = re.search(r'__version__ = "([^"]+)"',
                     (Path(__file__).parent / "trainer" / "__init__.py").read_text()).group(1)

REQUIRED = [
    "tensorflow==2.21.*",
    "tf-keras==2.21.*",
    "tensorboard==2.21.*",
    "efficientnet==1.1.1",
    "tensorflow-serving-api==2.21.*",
    "protobuf<8",
    "google-cloud-storage>=2.10",
    # scripts/submit_job.py talks to the Vertex AI REST API with these (also needed by the above).
    "google-auth>=2.20",
    "requests>=2.31",
    "absl-py>=2.0",
    "matplotlib>=3.7",
    "pillow>=10.0",
]
TESTS = [
    "pytest>=8",
    "gcp-storage-emulator==2026.7.19",
    "cryptography>=42",
    "jsonschema>=4",
    "pyyaml>=6",
]

setup(
    name="effnet-trainer",
    version=_VERSION,
    description="Fine-tune a pretrained EfficientNet on your images and serve it with TF Serving.",
    packages=find_packages(include=["trainer", "trainer.*", "serving", "serving.*"]),
    package_data={"serving": ["config/*.config"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require={"tests": TESTS},
    entry_points={"console_scripts": [
        "effnet-train=trainer.task:run_main",
        "effnet-prepare=trainer.prepare:run_main",
    ]},
)
