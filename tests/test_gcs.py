"""gs:// through TensorFlow's own filesystem and through effnet_common.gcs, against the GCS test front.

The front (testbed/gcs_front.py) runs gcp-storage-emulator behind a TLS-terminating
CONNECT proxy, so these tests exercise TensorFlow's real gs:// client code, retries included.
"""
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf  # noqa: E402

from effnet_common import fileio, gcs as tgcs  # noqa: E402
from tests.testing.presets import REPO_DIR as REPO  # noqa: E402



def _records(n, *, size=2000, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size + i, dtype=np.uint8).tobytes() for i in range(n)]


def _write_shards(root, split, shards):
    paths = []
    for i, records in enumerate(shards):
        path = f"{root}/{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
        with tf.io.TFRecordWriter(path) as w:
            for r in records:
                w.write(r)
        paths.append(path)
    return paths


def test_gfile_operations_on_gcs(gcs_bucket):
    root = f"{gcs_bucket}/run"
    tf.io.gfile.makedirs(f"{root}/sub/deeper")  # directory markers: empty media uploads
    with tf.io.gfile.GFile(f"{root}/a.txt", "w") as f:
        f.write("hello gs://")
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several 1 MiB read blocks
    with tf.io.gfile.GFile(f"{root}/sub/blob.bin", "wb") as f:
        f.write(data)

    assert tf.io.gfile.exists(gcs_bucket)
    assert tf.io.gfile.exists(f"{root}/a.txt") and not tf.io.gfile.exists(f"{root}/nope")
    assert tf.io.gfile.isdir(f"{root}/sub/deeper") and not tf.io.gfile.isdir(f"{root}/a.txt")
    assert tf.io.gfile.GFile(f"{root}/sub/blob.bin", "rb").read() == data
    assert tf.io.gfile.stat(f"{root}/sub/blob.bin").length == len(data)
    assert sorted(x.rstrip("/") for x in tf.io.gfile.listdir(root)) == ["a.txt", "sub"]

    tf.io.gfile.rename(f"{root}/a.txt", f"{root}/b.txt")
    assert tf.io.gfile.glob(f"{root}/*.txt") == [f"{root}/b.txt"]
    assert tf.io.gfile.GFile(f"{root}/b.txt").read() == "hello gs://"
    tf.io.gfile.rmtree(f"{root}/sub")
    assert not tf.io.gfile.exists(f"{root}/sub/blob.bin")


def test_fileio_on_gcs(gcs_bucket):
    path = f"{gcs_bucket}/model/config.json"
    fileio.write_json_atomic(path, {"a": 1})
    fileio.write_json_atomic(path, {"a": 2})  # overwrite in place
    assert fileio.read_json(path) == {"a": 2}
    assert tf.io.gfile.listdir(f"{gcs_bucket}/model") == ["config.json"]  # no temporaries left
    local = fileio.local_copy(path)
    assert not fileio.is_gcs(local) and json.load(open(local)) == {"a": 2}
    os.remove(local)


def test_tfrecord_dataset_reads_from_gcs(gcs_bucket):
    shards = [_records(40, size=30_000, seed=s) for s in range(3)]  # ~1.2 MB a shard
    _write_shards(gcs_bucket + "/data", "train", shards)
    files = tf.io.gfile.glob(gcs_bucket + "/data/train-*")
    read = [x.numpy() for x in tf.data.TFRecordDataset(sorted(files))]
    assert read == [r for shard in shards for r in shard]


def test_checkpoint_save_restore_on_gcs(gcs_bucket):
    v = tf.Variable(np.arange(6, dtype=np.float32))
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, f"{gcs_bucket}/ckpt", max_to_keep=2)
    for step in range(3):
        v.assign_add(tf.ones(6))
        manager.save(checkpoint_number=step)
    assert len(manager.checkpoints) == 2  # the oldest was deleted on gs://
    v.assign(tf.zeros(6))
    tf.train.Checkpoint(v=v).restore(tf.train.latest_checkpoint(f"{gcs_bucket}/ckpt"))
    np.testing.assert_allclose(v.numpy(), np.arange(6) + 3)


def test_saved_model_save_load_on_gcs(gcs_bucket):
    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.w

    tf.saved_model.save(Scale(), f"{gcs_bucket}/export/1")
    loaded = tf.saved_model.load(f"{gcs_bucket}/export/1")
    np.testing.assert_allclose(loaded(tf.constant([1.0, 2.0])).numpy(), [3.0, 6.0])


def test_glob_and_listdir_of_shards_match_local_disk(gcs_bucket, tmp_path):
    names = ["train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
             "train-00002-of-00003.tfrecord", "validation-00000-of-00001.tfrecord",
             "labels.txt", "nested/train-00000-of-00001.tfrecord"]
    for root in (str(tmp_path), gcs_bucket + "/shards"):
        for name in names:
            fileio.write_text_atomic(f"{root}/{name}", name)
    patterns = ["train-*", "*-of-00003.tfrecord", "train-0000[0-1]-*", "*", "nested/*",
                "*/train-*", "validation-?????-of-00001.tfrecord", "nothing-*"]
    for pattern in patterns:
        local = [os.path.relpath(p, tmp_path) for p in tf.io.gfile.glob(f"{tmp_path}/{pattern}")]
        remote = [p[len(gcs_bucket + "/shards/"):]
                  for p in tf.io.gfile.glob(f"{gcs_bucket}/shards/{pattern}")]
        assert sorted(remote) == sorted(local), pattern
    # listdir: the one difference is the trailing "/" TensorFlow keeps on gs:// folder names.
    remote_ls = [x.rstrip("/") for x in tf.io.gfile.listdir(gcs_bucket + "/shards")]
    assert sorted(remote_ls) == sorted(tf.io.gfile.listdir(str(tmp_path)))


def test_tensorflow_retries_a_burst_of_503s(gcs, gcs_bucket):
    shards = [_records(30, size=5000, seed=s) for s in range(2)]
    gcs.set_faults(every_nth_503=3)
    _write_shards(gcs_bucket + "/data", "train", shards)
    files = sorted(tf.io.gfile.glob(gcs_bucket + "/data/train-*"))
    read = [x.numpy() for x in tf.data.TFRecordDataset(files)]
    tf.io.gfile.rename(files[0], gcs_bucket + "/data/moved.tfrecord")
    listing = sorted(tf.io.gfile.listdir(gcs_bucket + "/data"))
    injected = gcs.stats()["injected_503"]
    gcs.set_faults()
    assert injected >= 3
    assert read == [r for shard in shards for r in shard]
    assert listing == ["moved.tfrecord", "train-00001-of-00002.tfrecord"]


def test_google_cloud_storage_upload(gcs_bucket, tmp_path):
    local = tmp_path / "package.tar.gz"
    local.write_bytes(os.urandom(50_000))
    assert tgcs.upload_file(str(local), gcs_bucket + "/staging/") == \
        gcs_bucket + "/staging/package.tar.gz"
    assert tf.io.gfile.GFile(gcs_bucket + "/staging/package.tar.gz", "rb").read() == \
        local.read_bytes()


def test_trainer_gcs_retries_503s(gcs, gcs_bucket, tmp_path):
    """Every second request answered 503, the count restarted for each call (each makes two or
    more requests, so each meets a 503)."""
    local = tmp_path / "weights.h5"
    local.write_bytes(os.urandom(20_000))
    injected = []
    try:
        gcs.set_faults(every_nth_503=2)
        url = tgcs.upload_file(str(local), gcs_bucket + "/w/weights.h5")
        injected.append(gcs.stats()["injected_503"])
        gcs.set_faults(every_nth_503=2)
        tgcs.check_writable([gcs_bucket + "/model_dir"])
        injected.append(gcs.stats()["injected_503"])
    finally:
        gcs.set_faults()
    assert min(injected) >= 1, injected
    assert tf.io.gfile.GFile(url, "rb").read() == local.read_bytes()


def test_check_writable_passes_and_leaves_nothing_behind(gcs_bucket, tmp_path):
    tgcs.check_writable([gcs_bucket + "/runs/1", str(tmp_path), gcs_bucket])
    assert tf.io.gfile.listdir(gcs_bucket) == []


def test_check_writable_missing_bucket_fails_with_one_line(gcs):
    with pytest.raises(tgcs.GcsError) as info:
        tgcs.check_writable(["gs://no-such-bucket-here/model"], timeout=10)
    message = str(info.value)
    assert "\n" not in message
    assert "gs://no-such-bucket-here does not exist" in message
    assert "gcloud storage buckets create gs://no-such-bucket-here" in message


def test_check_writable_unreachable_fails_with_one_line(gcs, monkeypatch):
    """Every attempt is refused at once, so the outcome is the same however fast the machine."""
    with socket.socket() as s:  # a loopback port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        with pytest.raises(tgcs.GcsError) as info:
            tgcs.check_writable(["gs://some-bucket/model"], timeout=1)
    message = str(info.value)
    assert "\n" not in message
    assert "did not answer in time (1 s)" in message and "gs://some-bucket" in message


def test_check_writable_stalled_storage_fails_with_one_line(gcs, gcs_bucket):
    """The front answers nothing while held, so only the client's own deadline can end the call:
    no delay races the timeout."""
    gcs.set_faults(hold=True)
    try:
        with pytest.raises(tgcs.GcsError) as info:
            tgcs.check_writable([gcs_bucket + "/model"], timeout=1)
        held = gcs.stats()["requests"]
    finally:
        gcs.set_faults()
    message = str(info.value)
    assert "\n" not in message and held >= 1
    assert "did not answer in time (1 s)" in message and gcs_bucket in message


def test_permission_denied_message():
    from google.api_core import exceptions as api

    message = tgcs.explain_error(api.Forbidden("caller lacks storage.objects.create\naccess"),
                                 action="writing to gs://b/m", bucket="b", timeout=30)
    assert "\n" not in message
    assert message.startswith("No permission for writing to gs://b/m in bucket gs://b")
    assert "roles/storage.objectAdmin" in message


def test_bad_urls_fail_with_one_line(tmp_path):
    with pytest.raises(tgcs.GcsError, match="not a Cloud Storage URL"):
        tgcs.parse_url("s3://bucket/x")
    with pytest.raises(tgcs.GcsError, match="names no bucket"):
        tgcs.parse_url("gs:///x")
    with pytest.raises(tgcs.GcsError, match="no such file"):
        tgcs.upload_file(str(tmp_path / "missing.tar.gz"), "gs://b/x/")


def test_proxy_refuses_other_hosts_and_plain_http(gcs):
    def ask(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", gcs.port), timeout=10) as s:
            s.sendall(request)
            return s.recv(200)

    assert ask(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n") \
        .startswith(b"HTTP/1.1 403")
    assert ask(b"CONNECT storage.googleapis.com:80 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
    assert ask(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n") \
        .startswith(b"HTTP/1.1 403")
    with pytest.raises(urllib.error.URLError):  # what any proxy-honouring client gets
        urllib.request.urlopen("https://example.com/", timeout=10)
    assert ask(b"CONNECT www.googleapis.com:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_apply_tf_gcs_defaults_lets_user_settings_win(monkeypatch):
    monkeypatch.setenv("GCS_READ_CACHE_BLOCK_SIZE_MB", "4")
    assert "GCS_READ_CACHE_BLOCK_SIZE_MB" not in tgcs.apply_tf_gcs_defaults()
    assert os.environ["GCS_READ_CACHE_BLOCK_SIZE_MB"] == "4"
    monkeypatch.delenv("GCS_READ_CACHE_BLOCK_SIZE_MB")
    assert tgcs.apply_tf_gcs_defaults() == {"GCS_READ_CACHE_BLOCK_SIZE_MB": "16"}


def requests_to(gcs, bucket_url):
    """Storage requests the front has seen for this bucket (other tests' traffic aside)."""
    return gcs.stats()["by_bucket"].get(bucket_url[len("gs://"):], 0)


@pytest.mark.slow
def test_block_size_default_reaches_tensorflow(gcs, gcs_bucket):
    """A fresh process that applies the defaults before importing TensorFlow reads a 20 MiB
    object in two 16 MiB ranged requests (plus one metadata request), not twenty 1 MiB ones."""
    path = gcs_bucket + "/big.bin"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"x" * (20 * 1024 * 1024))
    env = {k: v for k, v in os.environ.items() if k != "GCS_READ_CACHE_BLOCK_SIZE_MB"}
    code = ("from effnet_common import gcs; gcs.apply_tf_gcs_defaults(); import tensorflow as tf; "
            f"assert len(tf.io.gfile.GFile('{path}', 'rb').read()) == 20 * 1024 * 1024")
    before = requests_to(gcs, gcs_bucket)
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=120)
    assert requests_to(gcs, gcs_bucket) - before == 3


def test_session_gcs_settings_reached_this_process(gcs, gcs_bucket):
    """The plugin's pytest_configure set GCS_READ_CACHE_BLOCK_SIZE_MB=1 before TensorFlow was
    imported here: a 2.5 MiB object takes one metadata request and three 1 MiB reads."""
    path = gcs_bucket + "/blocks.bin"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"y" * (5 * 512 * 1024))
    before = requests_to(gcs, gcs_bucket)
    assert len(tf.io.gfile.GFile(path, "rb").read()) == 5 * 512 * 1024
    assert requests_to(gcs, gcs_bucket) - before == 4
