"""TF Serving's version folders: `export_base/<version>/`, the version a non-negative integer.

TF Serving's file-system source parses each child name of the base path as an int64 and
ignores the others, which is why an export is written under a non-numeric sibling and moved
into place. The export, the batch predictor (finding the newest export), Vertex AI deployment
and the docs all use this one pattern. Pure Python, no TensorFlow: scripts import it.
"""
from __future__ import annotations

import re
from typing import Iterable, List

# A version folder name, for embedding in a larger pattern (scripts/deploy_vertex.py).
VERSION_PATTERN = r"\d+"
_VERSION_RE = re.compile(VERSION_PATTERN)


def is_version(name: str) -> bool:
    """True for a folder name TF Serving loads as a version (a listing's trailing / allowed)."""
    return _VERSION_RE.fullmatch(str(name).rstrip("/")) is not None


def versions(names: Iterable[str]) -> List[int]:
    """The sorted version numbers among folder names (e.g. a tf.io.gfile.listdir result)."""
    return sorted(int(str(n).rstrip("/")) for n in names if is_version(n))
