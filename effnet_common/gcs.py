"""Cloud Storage operations that TensorFlow's gs:// filesystem has no equivalent for.

Everything else — reading shards, writing checkpoints, logs and exports — goes through
`tf.io.gfile` (see `effnet_common.fileio`). This module uses google-cloud-storage for the rest:
staging a file in a bucket, and checking, before a long job starts, that its buckets exist and
are writable. Every call has a timeout and retries transient
errors (429, 5xx, dropped connections) with exponential backoff through google.api_core's
`Retry`; every failure a user can fix ends in a `GcsError` whose message is one line: which
bucket, what failed, how to fix it.

It also holds the trainer's defaults for TensorFlow's gs:// filesystem (`apply_tf_gcs_defaults`).

Nothing heavy is imported at module level, so `trainer/__init__.py` can import this module and
apply the defaults before TensorFlow is imported.
"""
from __future__ import annotations

import contextlib
import os
import sys
import uuid

from absl import logging

from effnet_common import errors, flagutil

# TensorFlow's gs:// filesystem reads these once, when `import tensorflow` registers it
# (tsl/platform/cloud/gcs_file_system.cc, GcsFileSystem's constructor). Each value is a default:
# a GCS_* variable the user sets wins.
TF_GCS_DEFAULTS = {
    # TF reads gs:// files through a buffer of this size per open file, allocated in full on
    # the first read (BufferedGcsRandomAccessFile). TF's 64 MiB default times the shards a
    # tf.data pipeline interleaves is hundreds of MiB of RAM, and a 64 MiB read before the first
    # record. 16 MiB still makes each ranged request long enough that its round trip is small
    # next to its transfer.
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "16",
}

_PROBE_PREFIX = ".effnet-trainer-write-probe-"
_MAX_DETAIL = 160


class GcsError(errors.UserError):
    """A Cloud Storage problem the user can fix; the message is one line."""


def apply_tf_gcs_defaults() -> dict[str, str]:
    """Sets TF_GCS_DEFAULTS in os.environ where unset, so that user GCS_* settings win.

    Call before TensorFlow is imported: TensorFlow reads these variables only then. Called later,
    it still sets them for child processes and logs which ones this process will not see.

    Returns:
        The variables this call set.
    """
    applied = {k: v for k, v in TF_GCS_DEFAULTS.items() if k not in os.environ}
    os.environ.update(applied)
    if applied and "tensorflow" in sys.modules:
        logging.warning("gs:// defaults %s set after TensorFlow was imported: they apply to "
                        "child processes only; call effnet_common.process.prepare() before importing tensorflow.",
                        sorted(applied))
    return applied


def parse_url(url: str) -> tuple[str, str]:
    """Splits `gs://bucket/path/to/x` into ("bucket", "path/to/x")."""
    if not str(url).startswith("gs://"):
        raise GcsError(f"{url!r} is not a Cloud Storage URL: write it as gs://BUCKET/PATH.")
    bucket, _, name = str(url)[len("gs://"):].partition("/")
    if not bucket:
        raise GcsError(f"{url!r} names no bucket: write it as gs://BUCKET/PATH.")
    return bucket, name


def build_client():
    """A storage client: Application Default Credentials, or the emulator when
    STORAGE_EMULATOR_HOST is set (google-cloud-storage then uses anonymous credentials)."""
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage

    try:
        return storage.Client()
    except auth_exceptions.DefaultCredentialsError as e:
        raise GcsError(
            "No Google Cloud credentials found for Cloud Storage: run `gcloud auth "
            "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
            f"({flagutil.one_line(e, limit=_MAX_DETAIL)}).") from None


def build_retry(*, timeout: float):
    """google-cloud-storage's retry policy (429, 5xx, connection errors), bounded by `timeout`.

    Starts at 0.2 s rather than 1 s so that a short blip costs little; doubles up to 8 s.
    """
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(initial=0.2, maximum=8.0, multiplier=2.0).with_timeout(
        timeout)


def upload_file(local_path: str, gs_url: str, *, timeout: float = 120) -> str:
    """Uploads a local file, e.g. a package or weights file staged for a cloud job.

    Args:
        local_path: the file to upload.
        gs_url: the destination object, or a "folder" ending in "/" to keep the file's name.
        timeout: seconds for the whole upload, retries included.

    Returns:
        The gs:// URL of the uploaded object.
    """
    if not os.path.isfile(local_path):
        raise GcsError(f"Cannot upload {local_path!r}: no such file; check the path.")
    if gs_url.endswith("/"):
        gs_url += os.path.basename(local_path)
    bucket, name = parse_url(gs_url)
    if not name:
        gs_url = f"gs://{bucket}/{os.path.basename(local_path)}"
        name = os.path.basename(local_path)
    client = build_client()
    blob = client.bucket(bucket).blob(name)
    with _explained(f"uploading {local_path} to {gs_url}", bucket=bucket, timeout=timeout):
        blob.upload_from_filename(local_path, timeout=_request_timeout(timeout),
                                  retry=build_retry(timeout=timeout))
    logging.info("Uploaded %s to %s", local_path, gs_url)
    return gs_url


def check_writable(urls: list[str], *, timeout: float = 30) -> None:
    """Checks that each gs:// URL's bucket exists and that objects can be written and deleted
    under it, by writing and deleting a tiny probe object there.

    Meant for the start of a job, so that a wrong bucket or missing permission fails in seconds
    rather than at the first checkpoint. Deletion is checked too: TensorFlow renames on GCS by
    copy-and-delete, and checkpoint managers delete old checkpoints. Local paths are skipped.

    Args:
        urls: paths the job will write to (e.g. model_dir).
        timeout: seconds for each URL's check, retries included.

    Raises:
        GcsError: one line naming the bucket, what failed and how to fix it.
    """
    gs_urls = [u for u in urls if str(u).startswith("gs://")]
    if not gs_urls:
        return
    client = build_client()
    for url in gs_urls:
        bucket, prefix = parse_url(url)
        blob = client.bucket(bucket).blob(_as_folder(prefix) + _PROBE_PREFIX + uuid.uuid4().hex)
        _write_and_delete_probe(blob, url=url, timeout=timeout)
        logging.info("Checked %s: bucket exists and is writable", url)


def _write_and_delete_probe(blob, *, url: str, timeout: float) -> None:
    from google.api_core import exceptions as api

    retry, per_request = build_retry(timeout=timeout), _request_timeout(timeout)
    with _explained(f"writing to {url}", bucket=blob.bucket.name, timeout=timeout):
        try:
            blob.upload_from_string(b"", timeout=per_request, retry=retry, if_generation_match=0)
        except api.PreconditionFailed:
            pass  # a retry of an upload that had succeeded: the probe exists
    with _explained(f"deleting a probe object under {url} (TensorFlow deletes to rename and "
                    f"to drop old checkpoints)", bucket=blob.bucket.name, timeout=timeout):
        try:
            blob.delete(timeout=per_request, retry=retry)
        except api.NotFound:
            pass  # a retry of a delete that had succeeded


def _as_folder(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def _request_timeout(timeout: float) -> float:
    """Timeout of one HTTP request: the call's budget, but at most 60 s so a stuck request
    leaves time for a retry."""
    return max(1.0, min(60.0, float(timeout)))


@contextlib.contextmanager
def _explained(action: str, *, bucket: str, timeout: float):
    """Turns google-cloud errors raised inside the block into a one-line GcsError."""
    try:
        yield
    except GcsError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        raise GcsError(explain_error(e, action=action, bucket=bucket, timeout=timeout)) from e


def explain_error(error: Exception, *, action: str, bucket: str, timeout: float) -> str:
    """The one-line message for a failed storage call: what, where, how to fix."""
    from google.api_core import exceptions as api

    detail = flagutil.one_line(error, limit=_MAX_DETAIL)
    if isinstance(error, api.NotFound):
        return (f"Cloud Storage bucket gs://{bucket} does not exist ({action}): create it "
                f"(gcloud storage buckets create gs://{bucket}) or fix the path.")
    if isinstance(error, (api.Forbidden, api.Unauthorized)):
        return (f"No permission for {action} in bucket gs://{bucket} ({detail}): grant the job's "
                f"account roles/storage.objectAdmin on the bucket, or use another bucket.")
    if isinstance(error, api.PreconditionFailed):
        return f"Object changed while {action} in gs://{bucket} ({detail}): run it again."
    if isinstance(error, (api.RetryError, api.ServerError, api.TooManyRequests, TimeoutError,
                          ConnectionError)) or _is_network_error(error):
        return (f"Cloud Storage did not answer in time ({timeout:g} s) while {action} in "
                f"gs://{bucket} ({detail}): check network access to storage.googleapis.com "
                f"and try again.")
    return f"Cloud Storage failed while {action} in gs://{bucket} ({detail})."


def _is_network_error(error: Exception) -> bool:
    import requests
    from google.auth import exceptions as auth_exceptions

    return isinstance(error, (requests.exceptions.RequestException,
                              auth_exceptions.TransportError))
