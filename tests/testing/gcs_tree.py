"""Copies a gs:// "folder" with the rewrite API: what the GCS tests use to check that the test
front serves server-side copies (and their retries) as Cloud Storage does.

The trainer itself never copies trees between buckets, so this lives with the tests; it uses
effnet_common.gcs's client, retry policy and error wording, so a failure reads as the trainer's would.
"""
from __future__ import annotations

from effnet_common import gcs


def _as_folder(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def copy_tree(src_url: str, dst_url: str, *, timeout: float = 600) -> int:
    """Copies every object under `src_url` to the same relative name under `dst_url`.

    Args:
        src_url: gs:// "folder" to copy, e.g. gs://train/run1/export/1700000000.
        dst_url: gs:// "folder" to copy into.
        timeout: seconds for each object (listing included), retries included.

    Returns:
        The number of objects copied.

    Raises:
        gcs.GcsError: nothing under `src_url`, or a storage call failed (one line).
    """
    src_bucket, src_prefix = gcs.parse_url(src_url)
    dst_bucket, dst_prefix = gcs.parse_url(dst_url)
    src_prefix, dst_prefix = _as_folder(src_prefix), _as_folder(dst_prefix)
    client = gcs.build_client()
    retry, per_request = gcs.build_retry(timeout=timeout), max(1.0, min(60.0, float(timeout)))
    try:
        blobs = list(client.list_blobs(src_bucket, prefix=src_prefix, timeout=per_request, retry=retry))
    except Exception as e:  # pylint: disable=broad-except
        raise gcs.GcsError(gcs.explain_error(e, action=f"listing {src_url}", bucket=src_bucket,
                                             timeout=timeout)) from e
    if not blobs:
        raise gcs.GcsError(f"Nothing to copy: no objects under {src_url}; check the path.")
    target_bucket = client.bucket(dst_bucket)
    for blob in blobs:
        target = target_bucket.blob(dst_prefix + blob.name[len(src_prefix):])
        try:
            token = None
            while True:
                token, _, _ = target.rewrite(blob, token=token, timeout=per_request, retry=retry)
                if token is None:
                    break
        except Exception as e:  # pylint: disable=broad-except
            raise gcs.GcsError(gcs.explain_error(
                e, action=f"copying gs://{src_bucket}/{blob.name} to gs://{dst_bucket}/{target.name}",
                bucket=dst_bucket, timeout=timeout)) from e
    return len(blobs)
