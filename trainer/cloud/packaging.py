"""The Python-package route: the sdist built from a source checkout, and its upload to the bucket.

Vertex AI's prebuilt containers `pip install` the staged sdist and run `python -m trainer.task`.
The sdist is built from a checkout (setup.py, pyproject.toml and the packages beside them):
the one scripts/submit_job.py sits in, or, for the `effnet-submit` console script, the one this
package was installed from in editable mode.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

import trainer
from effnet_common import flagutil
from trainer.cloud.errors import CloudError

SDIST_COMMAND = ("-m", "build", "--sdist", "--no-isolation")


def is_checkout(path: str) -> bool:
    """Whether `path` holds what `python -m build` needs: setup.py, pyproject.toml, trainer/."""
    return all(os.path.exists(os.path.join(path, name)) for name in ("setup.py", "pyproject.toml", "trainer"))


def installed_checkout() -> Optional[str]:
    """The checkout the imported `trainer` package lives in (an editable install), or None (a wheel)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(trainer.__file__)))
    return root if is_checkout(root) else None


def read_version(source_dir: str) -> str:
    """The version of the sdist `source_dir` builds, read where setup.py reads it (trainer/__init__.py)."""
    with open(os.path.join(source_dir, "trainer", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def build_sdist(*, source_dir: str, out_dir: str) -> str:
    """Builds the sdist of `source_dir` into `out_dir` through pyproject.toml's backend; returns its path.

    --no-isolation uses this environment's setuptools instead of downloading one, so it works
    offline (`setup.py sdist`, the old way, is deprecated by setuptools).
    """
    result = subprocess.run([sys.executable, *SDIST_COMMAND, "--outdir", out_dir], cwd=source_dir,
                            capture_output=True, text=True, check=False)
    archives = glob.glob(os.path.join(out_dir, "*.tar.gz"))
    if result.returncode or len(archives) != 1:
        last = ((result.stderr + result.stdout).strip().splitlines() or ["no archive written"])[-1]
        raise CloudError(f"building the sdist in {source_dir} failed ({flagutil.one_line(last)}): run `python "
                         f"{' '.join(SDIST_COMMAND)}` there (pip install build if it is missing)")
    return archives[0]


def stage_package(*, source_dir: Optional[str], package_uri: str, timeout: float = 120.0) -> str:
    """Builds the sdist and uploads it to `package_uri` (through effnet_common.gcs); returns the URL.

    Raises:
      CloudError: no checkout to build from, a failed build, or a failed upload (one line each).
    """
    if source_dir is None:
        raise CloudError("--package builds the sdist from a source checkout, and this trainer package was "
                         "installed without one: run scripts/submit_job.py from a checkout, or pass --package_uri "
                         "of an sdist already staged")
    from effnet_common import gcs  # pylint: disable=import-outside-toplevel  # only --package needs Cloud Storage
    with tempfile.TemporaryDirectory() as tmp:
        sdist = build_sdist(source_dir=source_dir, out_dir=tmp)
        try:
            return gcs.upload_file(sdist, package_uri, timeout=timeout)
        except gcs.GcsError as e:  # already says what failed and how to fix it
            raise CloudError(flagutil.one_line(e)) from None
        except Exception as e:  # pylint: disable=broad-except  # any other failure is one line too
            raise CloudError(f"could not upload the sdist to {package_uri}: {flagutil.one_line(e)}") from None
