"""Vertex AI image-classification import files -> the rows trainer.prepare turns into shards.

Google's format (https://cloud.google.com/vertex-ai/docs/image-data/classification/prepare-data),
chosen by the file's extension:

- `.csv`: rows `[ML_USE,]PATH[,LABEL,...]`. ML_USE is `training`, `validation` or `test` (any
  case) or left out; PATH is usually a gs:// URI (a relative path is relative to the file's
  folder); zero, one or several labels (several in a row make the dataset multi-label).
- `.jsonl`: one object a line, `{"imageGcsUri": PATH, "classificationAnnotation":
  {"displayName": LABEL}}` (single-label) or `"classificationAnnotations": [{"displayName":
  LABEL}, ...]` (multi-label), with an optional `"dataItemResourceLabels":
  {"aiplatform.googleapis.com/ml_use": "training|validation|test"}`.

A row that does not fit is a `discovery.DataError` naming the file, the line and the fix; whether
its image can be read is prepare's business (it skips and counts what cannot).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Callable, Dict, List, Sequence, Tuple

import tensorflow as tf

from trainer.data import discovery

# Vertex AI's ML_USE values and the split (shard prefix) each one names.
ML_USE_SPLITS = {"training": "train", "validation": "validation", "test": "test"}
ML_USE_KEY = "aiplatform.googleapis.com/ml_use"


@dataclasses.dataclass(frozen=True)
class Source:
    """One input image, its labels and, when the input says so, its split.

    Attributes:
      path: where to read the image (local or gs://).
      name: the path shown to people and stored as image/filename (as the input wrote it).
      labels: the class names the image holds, sorted, no repeats; one for single-label data.
      ml_use: `training`, `validation` or `test` when the input fixes the split; '' lets
        prepare split it by --validation_fraction.
    """
    path: str
    name: str
    labels: Tuple[str, ...] = ()
    ml_use: str = ""

    @property
    def class_name(self) -> str:
        """The first label ('' for none): the class of a single-label image."""
        return self.labels[0] if self.labels else ""


@dataclasses.dataclass(frozen=True)
class ImportRows:
    """What an import file holds.

    Attributes:
      sources: one per row, in file order.
      multi_label: the file itself says multi-label: a CSV row with several labels, or a JSONL
        line with `classificationAnnotations`.
    """
    sources: List[Source]
    multi_label: bool


def resolve(base: str, path: str) -> str:
    """`path` as written in a list file: absolute (or a URL) as it is, else under `base`."""
    return path if discovery.is_absolute(path) else os.path.join(base, path)


def read_text(path: str, *, what: str) -> str:
    """The whole text of a list file (local or gs://), without a UTF-8 byte-order mark."""
    if not tf.io.gfile.exists(path):
        raise discovery.DataError(f"{what} {path} does not exist: check the path")
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise discovery.DataError(f"{what} {path} is not UTF-8 text (byte {e.start}): save it as "
                                  "UTF-8") from None


def read_import_file(path: str) -> ImportRows:
    """The rows of a Vertex AI import file, its format chosen by the extension.

    Raises:
      DataError: an extension other than .csv/.jsonl, a missing file, or a bad row (naming the
        file and the line).
    """
    ext = os.path.splitext(path)[1].lower()
    parser = _PARSERS.get(ext)
    if parser is None:
        raise discovery.DataError(f"--import_file {path} ends in {ext or 'no extension'!r}: name a "
                                  "Vertex AI import file .csv ([ML_USE,]PATH[,LABEL...] rows) or "
                                  ".jsonl (one imageGcsUri object a line)")
    text = read_text(path, what="--import_file")
    return parser(text, where=path, base=os.path.dirname(path))


def list_import_file(path: str, *, multi_label: bool) -> Tuple[List[Source], List[dict], List[str], bool]:
    """What trainer.prepare needs of an import file: its rows, the rows skipped (with reasons),
    the sorted class names, and whether the dataset is multi-label (the file says so, or
    `multi_label`).

    A single-label dataset has no use for a row without a label (Vertex AI imports it unlabelled
    and trains without it): it is skipped with that reason. A multi-label one keeps it as an
    image that holds none of the classes.
    """
    rows = read_import_file(path)
    multi = multi_label or rows.multi_label
    kept = [s for s in rows.sources if multi or s.labels]
    skipped = [{"path": s.name, "reason": "no label (a single-label dataset; --multi_label keeps it "
                                          "as an image of none of the classes)"}
               for s in rows.sources if not (multi or s.labels)]
    return kept, skipped, sorted({n for s in kept for n in s.labels}), multi


def _row_error(where: str, line: int, what: str, fix: str) -> discovery.DataError:
    return discovery.DataError(f"--import_file {where} line {line}: {what}: {fix}")


def _looks_like_path(cell: str) -> bool:
    """A URL, a path with a folder, or a file name with an extension: what tells a row's path
    from a mistyped ML_USE or a header cell."""
    return "://" in cell or "/" in cell or "\\" in cell or bool(os.path.splitext(cell)[1])


def _label(name, *, where: str, line: int) -> str:
    if not isinstance(name, str) or not name.strip():
        raise _row_error(where, line, f"label {name!r} is not a non-empty string",
                         "give every label a name (displayName)")
    if "\n" in name or "\r" in name:
        raise _row_error(where, line, f"label {name!r} holds a line break",
                         "labels.txt has one name a line; remove it")
    return name.strip()


def _source(path: str, labels: Sequence[str], ml_use: str, *, base: str) -> Source:
    return Source(path=resolve(base, path), name=path, labels=tuple(sorted(set(labels))), ml_use=ml_use)


# --------------------------------------------------------------------------- CSV

def parse_csv(text: str, *, where: str, base: str) -> ImportRows:
    """Rows `[ML_USE,]PATH[,LABEL,...]`; blank rows are ignored, empty label cells too.

    ML_USE is recognised by its value (training, validation, test, any case; an empty first cell
    followed by a path counts as left out), so rows with and without it mix in one file.
    """
    reader = csv.reader(io.StringIO(text))
    sources, multi = [], False
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            raise _row_error(where, reader.line_num, f"is not CSV ({e})", "fix the quoting") from None
        if cells is None:
            return ImportRows(sources, multi)
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        source = _csv_row(cells, where=where, line=reader.line_num, base=base)
        multi |= len(source.labels) > 1
        sources.append(source)


def _csv_row(cells: List[str], *, where: str, line: int, base: str) -> Source:
    first = cells[0]
    if first.lower() in ML_USE_SPLITS or (not first and len(cells) > 1):
        ml_use, cells = first.lower(), cells[1:]
    elif _looks_like_path(first):
        ml_use = ""
    else:
        raise _row_error(where, line, f"{first!r} is neither an ML_USE nor an image path",
                         "start the row with training, validation or test (any case), or with the "
                         "image's gs:// URI")
    path = cells[0]
    if not path:
        raise _row_error(where, line, "the image path is empty",
                         "write [ML_USE,]PATH[,LABEL...] with PATH a gs:// URI or a path relative "
                         "to this file")
    if not _looks_like_path(path):
        raise _row_error(where, line, f"{path!r} is not an image path",
                         "write [ML_USE,]PATH[,LABEL...] with PATH a gs:// URI or a file name")
    labels = [_label(c, where=where, line=line) for c in cells[1:] if c]
    return _source(path, labels, ml_use, base=base)


# --------------------------------------------------------------------------- JSON Lines

def parse_jsonl(text: str, *, where: str, base: str) -> ImportRows:
    """One object a line (blank lines ignored): imageGcsUri, its annotation(s), its ML_USE."""
    sources, multi = [], False
    for line, raw in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as e:
            what = f"is not JSON ({getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')})"
            raise _row_error(where, line, what, "write one JSON object a line") from None
        if not isinstance(obj, dict):
            raise _row_error(where, line, f"is a JSON {type(obj).__name__}, not an object",
                             'write one {"imageGcsUri": ...} object a line')
        path = obj.get("imageGcsUri")
        if not isinstance(path, str) or not path.strip():
            raise _row_error(where, line, f"imageGcsUri is missing or empty ({path!r})",
                             'give every line "imageGcsUri": "gs://bucket/image.jpg"')
        multi |= "classificationAnnotations" in obj
        labels = _jsonl_labels(obj, where=where, line=line)
        sources.append(_source(path.strip(), labels, _jsonl_ml_use(obj, where=where, line=line), base=base))
    return ImportRows(sources, multi)


def _jsonl_labels(obj: dict, *, where: str, line: int) -> List[str]:
    one, many = obj.get("classificationAnnotation"), obj.get("classificationAnnotations")
    if one is not None and many is not None:
        raise _row_error(where, line, "has both classificationAnnotation and classificationAnnotations",
                         "keep one: the first for single-label data, the list for multi-label")
    annotations = [one] if one is not None else (many if many is not None else [])
    if not isinstance(annotations, list):
        raise _row_error(where, line, "classificationAnnotations is not a list",
                         'write "classificationAnnotations": [{"displayName": "LABEL"}, ...]')
    for annotation in annotations:
        if not isinstance(annotation, dict) or "displayName" not in annotation:
            raise _row_error(where, line, f"annotation {annotation!r} has no displayName",
                             'write each annotation as {"displayName": "LABEL"}')
    return [_label(a["displayName"], where=where, line=line) for a in annotations]


def _jsonl_ml_use(obj: dict, *, where: str, line: int) -> str:
    labels = obj.get("dataItemResourceLabels")
    if labels is None:
        return ""
    if not isinstance(labels, dict):
        raise _row_error(where, line, "dataItemResourceLabels is not an object",
                         f'write "dataItemResourceLabels": {{"{ML_USE_KEY}": "training"}}')
    value = labels.get(ML_USE_KEY, "")
    if not isinstance(value, str) or value.strip().lower() not in (*ML_USE_SPLITS, ""):
        raise _row_error(where, line, f"unknown ML_USE {value!r}",
                         "use training, validation or test (any case), or leave it out")
    return value.strip().lower()


_PARSERS: Dict[str, Callable[..., ImportRows]] = {".csv": parse_csv, ".jsonl": parse_jsonl}
