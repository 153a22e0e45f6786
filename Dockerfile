# The training image: a Vertex AI custom container (containerSpec) that also runs locally.
#   docker build -t IMAGE .
#   docker run --gpus all IMAGE --train_data=gs://B/train-*.tfrecord --model_dir=gs://B/run1
# Arguments after the image name go to `python -m trainer.task` (the ENTRYPOINT), exactly as a
# CustomJob's containerSpec.args do. docs/cloud.md explains the choices below;
# tests/test_docker_build.py replays this file's steps without Docker.

# TensorFlow's own GPU image: TF 2.21 with the CUDA/cuDNN it was built against, matching the
# tensorflow==2.21.* pin in setup.py (so pip keeps it). For a CPU-only image pass
# --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /opt/effnet-trainer

# Layer 1, the dependencies: rebuilt only when the packaging files or the version change, not on
# every code change. setup.py needs nothing but itself, pyproject.toml and trainer/__init__.py
# (the version); the stub package is installed for its requirements, at the versions
# constraints.txt pins (the ones CI tested), and removed again.
COPY pyproject.toml setup.py constraints.txt ./
COPY trainer/__init__.py trainer/__init__.py
RUN python -m pip install --constraint constraints.txt . && python -m pip uninstall -y effnet-trainer

# Layer 2, the code: the only layer a code change rebuilds. The last command fails the build if
# the entry point cannot load and parse its flags (--only_check_args exits 0 after parsing;
# --help would exit 1 and fail every build).
COPY effnet_common/ effnet_common/
COPY trainer/ trainer/
COPY serving/ serving/
RUN python -m pip install --no-deps --constraint constraints.txt . && cd / && python -m trainer.task --only_check_args

# Start outside the source folder so that the installed package is what runs.
WORKDIR /
ENTRYPOINT ["python", "-m", "trainer.task"]
