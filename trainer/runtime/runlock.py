"""One run at a time per run directory: MODEL_DIR/.lock, local or on Cloud Storage.

Two trainers on one --model_dir interleave their checkpoints, backups and history.json: a user
found history.json holding one run's record while the checkpoint and the export came from the
other, and the second run died in TensorFlow's checkpoint merge. So `trainer.task` and a
re-export by `trainer.export` hold this lock for their whole run; a second one meets it with one
line naming the holder (host, process, since when) and exit status 2.

Taking the lock is one atomic create-if-absent:

- local: link(2) of the finished lock file to its name, which fails when the name exists;
- gs://: an upload with the precondition `ifGenerationMatch=0` ("only if no live object has
  this name"), which Cloud Storage answers 412 when the object exists
  (cloud.google.com/storage/docs/request-preconditions).

A lock left by a process that died is taken over: on the same host when its process no longer
exists; from another host when its lease expired, i.e. the holder stopped renewing it (a
holder rewrites the lock every `RENEW_SECONDS`; `LEASE_SECONDS` without a renewal means it is
gone). The takeover removes exactly the stale lock it read (gs://: `ifGenerationMatch` on its
generation; local: it is renamed away and checked, and put back if it was not that one), then
creates its own as above, so two processes taking over at once cannot both win. Under
MultiWorkerMirroredStrategy the chief holds the lock for the whole job (docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional, Tuple

from absl import logging

from effnet_common import errors, fileio

LOCK_FILE = ".lock"
# A holder on another host is presumed dead after this long without renewing its lease.
LEASE_SECONDS = 600
RENEW_SECONDS = 60


class LockedError(errors.UserError):
    """The run directory is held by another live run."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: what the lock file says."""
    host: str
    pid: int
    since: float
    renewed: float
    command: str = ""
    token: str = ""

    @classmethod
    def this_process(cls, command: str) -> "Holder":
        now = time.time()
        return cls(host=socket.gethostname(), pid=os.getpid(), since=now, renewed=now, command=command,
                   token=uuid.uuid4().hex)

    def renewed_now(self) -> "Holder":
        return dataclasses.replace(self, renewed=time.time())

    def to_bytes(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Optional["Holder"]:
        """The holder a lock file names; None for a file that is not one (then it is stale)."""
        try:
            raw = json.loads(data.decode())
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), since=float(raw["since"]),
                       renewed=float(raw["renewed"]), command=str(raw.get("command", "")),
                       token=str(raw.get("token", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def is_stale(self, *, now: float, host: str) -> bool:
        """Dead: on this host, its process is gone; elsewhere, its lease expired."""
        if self.host == host:
            return not _process_exists(self.pid)
        return now - self.renewed > LEASE_SECONDS

    def describe(self) -> str:
        since = datetime.datetime.fromtimestamp(self.since).astimezone().isoformat(timespec="seconds")
        what = f" ({self.command})" if self.command else ""
        return f"process {self.pid} on host {self.host}{what}, since {since}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class _LocalFile:
    """The lock as a local file."""

    def __init__(self, path: str):
        self.path = path
        self.made_folder = False

    def create(self, data: bytes) -> bool:
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            self.made_folder = True
        # Written whole under a private name, then linked into place: link(2) fails if the name
        # exists, and a reader never meets a half-written lock.
        draft = f"{self.path}.{uuid.uuid4().hex[:8]}"
        with open(draft, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(draft, self.path)
        except FileExistsError:
            return False
        finally:
            os.remove(draft)
        return True

    def created_version(self):
        return self.read()[1]

    def read(self) -> Tuple[Optional[bytes], object]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        return data, data

    def remove_if(self, version) -> bool:
        """Removes the lock only if it still holds `version` (what `read` returned)."""
        aside = f"{self.path}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            if f.read() == version:
                os.remove(aside)
                return True
        with contextlib.suppress(FileExistsError):  # another process's fresh lock: put it back
            os.link(aside, self.path)
        os.remove(aside)
        return False

    def replace_if(self, version, data: bytes) -> Optional[object]:
        current, _ = self.read()
        if current != version:
            return None
        fileio.write_bytes_atomic(self.path, data)
        return data


class _GcsObject:
    """The lock as a Cloud Storage object, guarded by generation preconditions."""

    def __init__(self, url: str):
        from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
        from effnet_common import gcs  # pylint: disable=import-outside-toplevel
        bucket, name = gcs.parse_url(url)
        self._blob = gcs.build_client().bucket(bucket).blob(name)
        self._failed = (exceptions.PreconditionFailed, exceptions.NotFound)

    def create(self, data: bytes) -> bool:
        try:
            self._blob.upload_from_string(data, if_generation_match=0)
        except self._failed:
            return False
        return True

    def created_version(self):
        return self._blob.generation  # set from the upload's response

    def read(self) -> Tuple[Optional[bytes], object]:
        for _ in range(3):
            try:
                self._blob.reload()
                generation = self._blob.generation
                return self._blob.download_as_bytes(if_generation_match=generation), generation
            except self._failed:
                if not self._blob.exists():
                    return None, None  # else: rewritten between the two requests, read again
        return None, None

    def remove_if(self, version) -> bool:
        try:
            self._blob.delete(if_generation_match=version)
        except self._failed:
            return False
        return True

    def replace_if(self, version, data: bytes) -> Optional[object]:
        try:
            self._blob.upload_from_string(data, if_generation_match=version)
        except self._failed:
            return None
        return self._blob.generation


def _store(path: str):
    return _GcsObject(path) if fileio.is_gcs(path) else _LocalFile(path)


class RunLock:
    """The lock of one run directory, held from `acquire` to `release` (or as a context)."""

    def __init__(self, root: str, *, command: str = "trainer.task"):
        self.path = fileio.join(root, LOCK_FILE)
        self._store = _store(self.path)
        self._holder = Holder.this_process(command)
        self._version = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def acquire(self) -> "RunLock":
        """Takes the lock, or raises LockedError naming the live process that holds it."""
        for _ in range(5):
            if self._store.create(self._holder.to_bytes()):
                self._version = self._store.created_version()
                self._start_renewing()
                return self
            data, version = self._store.read()
            if data is None:
                continue  # released between our create and read: try again
            holder = Holder.from_bytes(data)
            if holder is not None and not holder.is_stale(now=time.time(), host=socket.gethostname()):
                raise LockedError(f"{self.path} is held by {holder.describe()}: one run at a time per --model_dir; "
                                  "wait for it to end, or pass another --model_dir")
            logging.warning("taking over %s, left by %s", self.path,
                            holder.describe() + " (no longer running)" if holder else "an unreadable lock file")
            self._store.remove_if(version)
        raise LockedError(f"{self.path}: could not take the lock (other processes keep taking it); try again")

    def release(self) -> None:
        """Stops renewing and removes the lock if it is still ours."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self._version is not None:
            self._store.remove_if(self._version)
            self._version = None
        if getattr(self._store, "made_folder", False):  # a folder made for the lock alone goes with it
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="run-lock-lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            self._holder = self._holder.renewed_now()
            try:
                version = self._store.replace_if(self._version, self._holder.to_bytes())
            except Exception as e:  # pylint: disable=broad-except  # a network blip: the lease has minutes left
                logging.warning("could not renew %s: %s", self.path, e)
                continue
            if version is None:
                logging.error("%s was taken by another process: this run no longer holds its --model_dir", self.path)
                return
            self._version = version

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def held(root: str, *, enabled: bool = True, command: str = "trainer.task") -> Iterator[None]:
    """The run directory's lock for the duration of the block (nothing when not `enabled`: a
    worker other than the chief, or a run that writes nothing)."""
    if not enabled:
        yield
        return
    with RunLock(root, command=command):
        yield
