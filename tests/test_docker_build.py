"""The Dockerfile and cloudbuild.yaml, replayed without Docker or the network.

There is no Docker engine here, so `replay_dockerfile` does what `docker build` does with the
instructions this Dockerfile uses: ARG/FROM (the base image's Python is a fresh virtual
environment whose sys.path also holds this checkout's .venv site-packages, standing in for the
TensorFlow the base image preinstalls), ENV, WORKDIR (under a scratch root), COPY (from a build
context filtered by .dockerignore, as the daemon receives it) and RUN (`/bin/sh -c`, failing the
build on a non-zero status, as docker build does). pip runs with --no-index (everything is
installed already; the real build downloads) and without build isolation (setuptools comes from
.venv, not a download). cloudbuild.yaml's bash steps run the same way, with `docker` and
`gcloud` replaced by recorders.
"""
import os
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_cloud import _checkout_copy, _docker_ignored
from tests.testing.presets import REPO



class BuildFailed(AssertionError):
    """A RUN step exited non-zero: docker build would stop here."""


@pytest.fixture(scope="module")
def base_python(tmp_path_factory):
    """The 'base image': a fresh venv that sees .venv's packages (TensorFlow...) but not our package."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    fresh_site = subprocess.run([str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    # Plain path lines: .venv's own .pth files (our editable install among them) stay inactive.
    Path(fresh_site, "_base_image.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def instructions(text: str):
    """(keyword, argument text) per instruction, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def build_context(dest: Path) -> Path:
    """The files `docker build .` sends: the checkout less what .dockerignore excludes."""
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    checkout = _checkout_copy(dest.parent / "checkout")
    for path in sorted(p for p in checkout.rglob("*") if p.is_file()):
        relative = path.relative_to(checkout).as_posix()
        if not _docker_ignored(relative, patterns):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / relative)
    return dest


def _env(venv: Path) -> dict:
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv.parent), "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0", "LANG": "C.UTF-8"}


def replay_dockerfile(text: str, *, context: Path, root: Path, venv: Path) -> dict:
    """Runs the Dockerfile's steps; returns {"env", "workdir", "entrypoint"} or raises BuildFailed."""
    env, workdir, entrypoint = _env(venv), "/", None
    for keyword, args in instructions(text):
        if keyword in ("ARG", "FROM"):
            continue  # the base image is `venv`
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))
        elif keyword == "WORKDIR":
            workdir = os.path.join(workdir, args)
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            _copy(sources, dest, context=context, target=root / os.path.join(workdir, dest).lstrip("/"))
        elif keyword == "RUN":
            result = subprocess.run(["/bin/sh", "-c", args], cwd=root / workdir.lstrip("/"), env=env,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode:
                raise BuildFailed(f"RUN {args} exited {result.returncode}: {result.stderr[-1500:]}")
        elif keyword == "ENTRYPOINT":
            entrypoint = args
        else:
            raise AssertionError(f"the replay does not know {keyword}: teach it, or keep the Dockerfile simple")
    return {"env": env, "workdir": workdir, "entrypoint": entrypoint}


def _copy(sources, dest: str, *, context: Path, target: Path) -> None:
    for source in sources:
        path = context / source
        if not path.exists():  # docker build: "COPY failed: file not found in build context"
            raise BuildFailed(f"COPY {source}: not in the build context (.dockerignore?)")
        if path.is_dir():
            shutil.copytree(path, target if dest.endswith("/") and len(sources) == 1 else target / path.name,
                            dirs_exist_ok=True)
        else:
            where = target / path.name if dest.endswith("/") else target
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, where)


@pytest.mark.slow
def test_the_dockerfile_builds_and_its_entrypoint_runs(tmp_path, base_python):
    context = build_context(tmp_path / "context")
    built = replay_dockerfile((REPO / "Dockerfile").read_text(), context=context, root=tmp_path / "root",
                              venv=base_python)
    assert built["workdir"] == "/" and "trainer.task" in built["entrypoint"]
    python = base_python / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import trainer; print(trainer.__file__)"], cwd="/", env=built["env"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(base_python))  # the installed package, not the copied sources
    bad = subprocess.run([str(python), "-m", "trainer.task", "--no_such_flag"], cwd="/", env=built["env"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no_such_flag" in bad.stderr


@pytest.mark.slow
def test_a_failing_run_step_fails_the_replay_as_docker_build_would(tmp_path, base_python):
    """A RUN step that exits non-zero fails the build (the Dockerfile once ended with --helpshort,
    which then exited 1); so does a COPY of a path the context lacks."""
    context = build_context(tmp_path / "context")
    old = (REPO / "Dockerfile").read_text().replace("--only_check_args", "--no_such_flag > /dev/null")
    with pytest.raises(BuildFailed, match="--no_such_flag"):
        replay_dockerfile(old, context=context, root=tmp_path / "root", venv=base_python)
    missing = (REPO / "Dockerfile").read_text().replace("COPY serving/ serving/", "COPY tests/ tests/")
    with pytest.raises(BuildFailed, match="not in the build context"):
        replay_dockerfile(missing, context=context, root=tmp_path / "root2", venv=base_python)


def _recorder(bin_dir: Path, name: str, status: int) -> None:
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$RECORD"\nexit {status}\n')
    path.chmod(0o755)


def _substitute(script: str, values: dict) -> str:
    for key, value in values.items():
        script = script.replace("${" + key + "}", value).replace("$" + key, value)
    return script


def test_cloudbuild_bash_steps_run(tmp_path, base_python):
    """Every bash step but `test` (that one is CI's own script, .ci/run) runs as Cloud Build runs it."""
    source = _checkout_copy(tmp_path / "src")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _recorder(bin_dir, "docker", 1)  # no previous image to pull
    _recorder(bin_dir, "gcloud", 0)
    record = tmp_path / "record.txt"
    env = dict(_env(base_python), PATH=f"{bin_dir}:{base_python / 'bin'}:/usr/bin:/bin", RECORD=str(record))
    steps = {s["id"]: s for s in yaml.safe_load((REPO / "cloudbuild.yaml").read_text())["steps"]}
    values = {"_REGION": "us-central1", "PROJECT_ID": "my-proj", "_REPOSITORY": "ml", "_IMAGE": "effnet-trainer",
              "SHORT_SHA": "abc1234", "BUILD_ID": "b-1", "_STAGING_BUCKET": "gs://my-staging", "_SUBMIT_PRESET": "",
              "_TRAINER_ARGS": ""}
    for step_id in ("pull-cache", "sdist", "upload-sdist", "submit"):
        step = steps[step_id]
        assert step["entrypoint"] == "bash" and step["args"][0] == "-c"
        result = subprocess.run(["bash", "-c", _substitute(step["args"][1], values)], cwd=source, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (step_id, result.stderr[-1500:])
    [sdist] = [p.name for p in (source / "dist").iterdir()]
    assert sdist.replace("-", "_") == "effnet_trainer_0.1.0.tar.gz"  # setuptools < 69 keeps the dash
    assert record.read_text().splitlines() == [
        "docker pull us-central1-docker.pkg.dev/my-proj/ml/effnet-trainer:latest",
        f"gcloud storage cp dist/{sdist} gs://my-staging/packages/abc1234/"]
