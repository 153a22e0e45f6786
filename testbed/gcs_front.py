"""A local stand-in for Google Cloud Storage that TensorFlow's own gs:// filesystem can reach.

TensorFlow's gs:// filesystem (tsl `gcs_file_system.cc`) talks to the fixed hosts
www.googleapis.com and storage.googleapis.com over HTTPS through libcurl, which honours
`HTTPS_PROXY` and `CURL_CA_BUNDLE`. So this module runs, in a child process:

* `gcp-storage-emulator` with in-memory storage on a free loopback port, and
* a "front" on another loopback port that
  - accepts `CONNECT www.googleapis.com:443` / `CONNECT storage.googleapis.com:443` (and no other
    host), terminates TLS with a throw-away CA made here with `cryptography`, and forwards the
    plain HTTP requests inside the tunnel to the emulator;
  - answers plain origin-form requests (`GET /storage/v1/...`) the same way, which is what
    google-cloud-storage sends when `STORAGE_EMULATOR_HOST` points at the front;
  - refuses plain-HTTP proxying (`GET http://host/...`), so nothing can leave the machine;
  - fills three gaps of the emulator (2026.7.19) and a fourth found by injecting faults:
    an empty-body `uploadType=media` upload (TensorFlow's directory markers) crashes it, so it
    is replayed as a zero-byte resumable upload; its resumable `Location` says `http://`, so
    it is rewritten to `https://` inside the tunnel; it has no `GET .../storageLayout`, so the
    front answers it (hierarchical namespace off); and a resumable-upload status query with
    nothing received gets `Range: bytes=0-0` (one byte) where GCS sends no Range, which would
    make a retried upload skip its first byte, so the front drops that header;
  - sets TCP_NODELAY and sends each response in one write (otherwise Nagle's algorithm and
    delayed ACKs cost ~40 ms a request);
  - injects faults, switchable at run time: every Nth storage request answered 503, and a
    hold: no storage request is answered until the faults are switched again (a stalled
    service: a timeout test then has no delay to race against its budget).

The child process keeps test traffic off the test process's GIL (TensorFlow calls that hold
the GIL would otherwise deadlock against an in-process Python server) and dies when its parent
does (it exits when its stdin closes).

Pytest: `tests/conftest.py` registers this module with `pytest_plugins`, which gives
* `gcs` (session): the started `GcsFront`, its `env` applied to `os.environ` for the session;
* `gcs_bucket` (function): a fresh empty bucket, as `gs://name`, with faults switched off.
A test module must not import these fixtures (`from testbed.gcs_front import gcs`): pytest
would then hold a second session fixture of that module, and each instance used to start its
own front and point os.environ at it, so the last one started took all gs:// traffic while the
shared `gcs_bucket` created its buckets in the first one's emulator: a 404 that depended on
which modules ran in which order. One process now has one front, however many fixture
definitions ask for it, and `gcs_bucket` checks that os.environ routes to it.

TensorFlow reads the `GCS_*` tuning variables (block size, caches, retry delays) once, when it
registers the gs:// filesystem at `import tensorflow`; the proxy, CA and token variables are
read on every request. So `pytest_configure` below sets the port-independent `GCS_*` test
values before any test module imports TensorFlow (conftest.py must not import TensorFlow at
its top), and `gcs` sets the rest before the first gs:// access. A subprocess (a trainer run,
a benchmark) gets everything by starting with `{**os.environ, **front.env}`.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import http.client
import http.server
import json
import logging
import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
import uuid

import pytest

_log = logging.getLogger("gcs_front")

ALLOWED_HOSTS = ("www.googleapis.com", "storage.googleapis.com")

# Port-independent settings: safe for every test, and they must be in the environment before
# TensorFlow is imported (see the module docstring).
STATIC_ENV = {
    # Small blocks so that even small test files take several ranged reads.
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "1",
    # Objects written by google-cloud-storage are seen by tf.io.gfile at once.
    "GCS_STAT_CACHE_MAX_AGE": "0",
    # Retries in milliseconds, not TensorFlow's default 1 s doubling to 32 s.
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "200000",
    "GCS_RETRY_CONFIG_MAX_RETRIES": "6",
    # TensorFlow's auth provider: a fixed token, and never probe the GCE metadata server.
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",
    "NO_GCE_CHECK": "true",
}

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length", "expect"}


# ----------------------------------------------------------------------------------------------
# Throw-away certificate authority.

def build_certificates(*, directory: str) -> dict:
    """Writes a new CA and a server certificate for the Google storage hosts into `directory`.

    A fresh CA per run means nothing outside the test process ever trusts it.

    Returns:
        Paths: `ca` (the bundle to pass as CURL_CA_BUNDLE), `cert` and `key` (for the front).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "effnet-trainer test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ALLOWED_HOSTS[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in ALLOWED_HOSTS]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: os.path.join(directory, f"{name}.pem") for name in ("ca", "cert", "key")}
    pem = serialization.Encoding.PEM
    with open(paths["ca"], "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


# ----------------------------------------------------------------------------------------------
# The emulator, in the child process.

def start_emulator():
    """Starts gcp-storage-emulator (in memory) on a free loopback port in a daemon thread.

    Built from the emulator's own request handler rather than its `create_server`, to get
    TCP_NODELAY on its sockets and a listen backlog that never overflows.

    Returns:
        (server, storage): the HTTP server (its `server_address` has the port) and the
        emulator's `Storage`, which the front consults for the resumable-status fix.
    """
    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.storage import Storage

    class Handler(emulator_server.RequestHandler):
        disable_nagle_algorithm = True

    class Server(http.server.HTTPServer):
        request_queue_size = 128

    storage = Storage(use_memory_fs=True)
    httpd = Server(("127.0.0.1", 0), functools.partial(Handler, storage))
    threading.Thread(target=httpd.serve_forever, name="emulator", daemon=True).start()
    return httpd, storage


# ----------------------------------------------------------------------------------------------
# HTTP plumbing of the front.

class _Request:
    """One HTTP request as read off a client connection."""

    def __init__(self, method: str, target: str, version: str, headers: list):
        self.method, self.target, self.version, self.headers = method, target, version, headers
        self.body = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    @property
    def wants_close(self) -> bool:
        conn = (self.header("Connection") or "").lower()
        return conn == "close" or (self.version == "HTTP/1.0" and conn != "keep-alive")


def _read_head(rfile) -> _Request | None:
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) != 3:
        raise ValueError(f"bad request line {line!r}")
    headers = []
    while True:
        raw = rfile.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return _Request(*parts, headers)


def _read_body(rfile, req: _Request) -> bytes:
    if (req.header("Transfer-Encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int(rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(rfile.read(size))
            rfile.readline(65537)
    length = int(req.header("Content-Length") or 0)
    return rfile.read(length) if length else b""


class _Response:
    def __init__(self, status: int, headers: list | None = None, body: bytes = b"",
                 reason: str | None = None):
        self.status, self.headers, self.body = status, list(headers or []), body
        self.reason = reason or http.client.responses.get(status, "Unknown")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))

    def to_bytes(self, *, close: bool) -> bytes:
        """The whole response as one buffer, so it goes out in one write."""
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP_BY_HOP]
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("Connection: close" if close else "Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _json_response(status: int, obj) -> _Response:
    return _Response(status, [("Content-Type", "application/json")], json.dumps(obj).encode())


def _error(status: int, message: str) -> _Response:
    return _json_response(status, {"error": {"code": status, "message": message,
                                             "errors": [{"message": message}]}})


# ----------------------------------------------------------------------------------------------
# The front's behaviour: faults, emulator fixes, forwarding.

def _bucket_of(target: str) -> str:
    """The bucket a storage request is about: JSON API (/storage/v1/b/B, /upload/..., /download/...)
    or XML API (/B/object), which TensorFlow reads objects with; "" for none."""
    parts = urllib.parse.urlsplit(target).path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "b" and i >= 2 and parts[i - 1] == "v1":
            return parts[i + 1]
    return parts[1] if len(parts) > 2 and parts[1] not in ("storage", "upload", "download") else ""


def _object_name(req: _Request, split) -> str | None:
    """The object a JSON-API upload or object request names, or None."""
    query = urllib.parse.parse_qs(split.query)
    if split.path.startswith("/upload/storage/v1/"):
        if query.get("name"):
            return query["name"][0]
        start = req.body.find(b"{")
        try:  # multipart: the first part is the object's metadata, as JSON
            return json.JSONDecoder().raw_decode(req.body[start:].decode("utf-8", "replace"))[0].get("name")
        except (ValueError, AttributeError):
            return None
    parts = split.path.split("/o/", 1)
    return urllib.parse.unquote(parts[1]) if len(parts) == 2 else None


class _FrontState:
    """Shared by all connections of the front: emulator address, faults and counters."""

    def __init__(self, *, emulator_port: int, storage, ssl_context: ssl.SSLContext):
        self.emulator_port = emulator_port
        self.storage = storage
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        self.emulator_lock = threading.Lock()
        self.precondition_lock = threading.Lock()  # a generation check and its write, as one step
        self.every_nth_503 = 0
        self.hold = False
        self.released = threading.Event()  # set when a hold ends: held requests answer then
        self.counters = {"requests": 0, "injected_503": 0, "refused": 0, "tunnels": 0}
        self.by_bucket: dict[str, int] = {}  # storage requests per bucket, never reset

    def count(self, name: str) -> int:
        with self.lock:
            self.counters[name] += 1
            return self.counters[name]

    def control(self, req: _Request) -> _Response:
        path = urllib.parse.urlsplit(req.target).path
        if path == "/_front/faults" and req.method == "POST":
            faults = json.loads(req.body or b"{}")
            with self.lock:
                self.every_nth_503 = int(faults.get("every_nth_503", 0))
                self.hold = bool(faults.get("hold", False))
                self.released.set()  # whatever was held is answered now
                self.released = threading.Event()
                self.counters["requests"] = 0
                self.counters["injected_503"] = 0
            return _json_response(200, {"ok": True})
        if path == "/_front/stats":
            with self.lock:
                return _json_response(200, {**self.counters, "by_bucket": dict(self.by_bucket)})
        return _error(404, f"no control endpoint {path}")

    def serve(self, req: _Request, *, scheme: str) -> _Response:
        """Answers one storage request: faults first, then the emulator with its fixes."""
        n = self.count("requests")
        bucket = _bucket_of(req.target)
        with self.lock:
            self.by_bucket[bucket] = self.by_bucket.get(bucket, 0) + 1
        with self.lock:
            every_nth, hold, released = self.every_nth_503, self.hold, self.released
        if hold:
            released.wait(timeout=600)
            return _error(503, "held by the GCS test front: service unavailable")
        if every_nth and n % every_nth == 0:
            self.count("injected_503")
            return _error(503, "injected by the GCS test front: service unavailable")
        return self._fixed(req, scheme=scheme)

    def _fixed(self, req: _Request, *, scheme: str) -> _Response:
        split = urllib.parse.urlsplit(req.target)
        query = urllib.parse.parse_qs(split.query)
        if (req.method == "POST" and split.path.startswith("/upload/storage/v1/")
                and query.get("uploadType") == ["media"] and not req.body):
            return self._empty_media_upload(req, split, query)
        if req.method == "GET" and split.path.endswith("/storageLayout"):
            return self._storage_layout(req, split.path)
        if query.get("ifGenerationMatch"):
            with self.precondition_lock:
                failed = self._generation_mismatch(req, split, query["ifGenerationMatch"][0])
                return failed or self._forwarded(req, split, query, scheme=scheme)
        return self._forwarded(req, split, query, scheme=scheme)

    def _forwarded(self, req, split, query, *, scheme: str) -> _Response:
        resp = self.forward(req.method, req.target, req.headers, req.body)
        location = resp.header("Location")
        if scheme == "https" and location and location.startswith("http://"):
            resp.set_header("Location", "https://" + location[len("http://"):])
        if resp.status == 308 and req.method == "PUT" and not req.body:
            self._fix_resume_status(resp, query)
        return resp

    def _generation_mismatch(self, req, split, wanted: str) -> _Response | None:
        """GCS's `ifGenerationMatch` precondition, which the emulator ignores: 412 unless the
        object's live generation is `wanted` ("0": no live object of that name), as Cloud Storage
        answers (cloud.google.com/storage/docs/request-preconditions). Covers what a lock needs:
        uploads (name in the query or in a multipart body's metadata) and deletes."""
        bucket, name = _bucket_of(req.target), _object_name(req, split)
        if name is None:
            return None
        meta = self.forward("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}", [], b"")
        live = str(json.loads(meta.body).get("generation", "0")) if meta.status == 200 else "0"
        return None if live == wanted else _error(412, f"conditionNotMet: {name} is at generation {live}, not {wanted}")

    def _empty_media_upload(self, req, split, query) -> _Response:
        """The emulator crashes on an empty media upload; do it as a zero-byte resumable one."""
        query = {k: v for k, v in query.items() if k not in ("uploadType", "ifGenerationMatch")}
        query["uploadType"] = ["resumable"]
        start = f"{split.path}?{urllib.parse.urlencode(query, doseq=True)}"
        headers = [(k, v) for k, v in req.headers if k.lower() != "content-type"]
        session = self.forward("POST", start, headers, b"")
        location = session.header("Location")
        if session.status != 200 or not location:
            return session
        target = urllib.parse.urlsplit(location)
        return self.forward("PUT", f"{target.path}?{target.query}", headers, b"")

    def _storage_layout(self, req, path) -> _Response:
        bucket_path = path[: -len("/storageLayout")]
        bucket = self.forward("GET", bucket_path, req.headers, b"")
        if bucket.status != 200:
            return bucket
        name = json.loads(bucket.body).get("name")
        return _json_response(200, {"kind": "storage#storageLayout", "bucket": name,
                                     "location": "US", "locationType": "multi-region",
                                     "hierarchicalNamespace": {"enabled": False}})

    def _fix_resume_status(self, resp: _Response, query) -> None:
        upload_id = (query.get("upload_id") or [None])[0]
        if upload_id and self.storage.get_resumable_byte_count(upload_id) == 0:
            resp.set_header("Range", None)

    def forward(self, method: str, target: str, headers: list, body: bytes) -> _Response:
        """Sends one request to the emulator (one at a time: it serves one at a time)."""
        send = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        send.append(("Content-Length", str(len(body))))
        with self.emulator_lock:
            conn = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=120)
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                if not any(k.lower() == "host" for k, _ in send):
                    conn.putheader("Host", f"127.0.0.1:{self.emulator_port}")
                for key, value in send:
                    conn.putheader(key, value)
                conn.endheaders(body)
                raw = conn.getresponse()
                return _Response(raw.status, raw.getheaders(), raw.read(), raw.reason)
            finally:
                conn.close()


class _FrontHandler(socketserver.BaseRequestHandler):
    """One client connection: a CONNECT tunnel, plain storage requests, or a refusal."""

    state: _FrontState  # set on the subclass the server is built with

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb")
        try:
            first = _read_head(rfile)
            if first is None:
                return
            if first.method == "CONNECT":
                self._tunnel(sock, first)
            elif "://" in first.target or not first.target.startswith("/"):
                self.state.count("refused")
                sock.sendall(_error(403, "the GCS test front refuses plain-HTTP proxying")
                             .to_bytes(close=True))
            else:
                self._serve_loop(rfile, sock, scheme="http", first=first)
        except (ConnectionError, ssl.SSLError, OSError, ValueError) as e:
            logging.debug("front connection ended: %s", e)
        finally:
            rfile.close()

    def _tunnel(self, sock, req: _Request) -> None:
        host, _, port = req.target.rpartition(":")
        if host.lower() not in ALLOWED_HOSTS or port != "443":
            self.state.count("refused")
            sock.sendall(_Response(403, body=f"refused: {req.target}".encode(),
                                   reason="Forbidden").to_bytes(close=True))
            return
        self.state.count("tunnels")
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        tls = self.state.ssl_context.wrap_socket(sock, server_side=True)
        tls_rfile = tls.makefile("rb")
        try:
            self._serve_loop(tls_rfile, tls, scheme="https", first=None)
        finally:
            tls_rfile.close()

    def _serve_loop(self, rfile, sock, *, scheme: str, first: _Request | None) -> None:
        req = first
        while True:
            if req is None:
                req = _read_head(rfile)
                if req is None:
                    return
            if "100-continue" in (req.header("Expect") or "").lower():
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req.body = _read_body(rfile, req)
            if scheme == "http" and req.target.startswith("/_front/"):
                resp = self.state.control(req)
            else:
                resp = self.state.serve(req, scheme=scheme)
            _log.info("%s %s %s -> %d %s", scheme, req.method, req.target, resp.status,
                      resp.header("Range") or "")
            sock.sendall(resp.to_bytes(close=req.wants_close))
            if req.wants_close:
                return
            req = None


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve(*, directory: str) -> None:
    """Child-process main: starts emulator and front, reports ports, runs until stdin closes."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if os.environ.get("GCS_FRONT_VERBOSE"):
        _log.setLevel(logging.INFO)  # one line a request, in front.log
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    paths = build_certificates(directory=directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["cert"], paths["key"])
    context.set_alpn_protocols(["http/1.1"])
    emulator, storage = start_emulator()
    state = _FrontState(emulator_port=emulator.server_address[1], storage=storage,
                        ssl_context=context)
    handler = type("Handler", (_FrontHandler,), {"state": state})
    front = _ThreadingServer(("127.0.0.1", 0), handler)
    threading.Thread(target=front.serve_forever, name="front", daemon=True).start()
    print(json.dumps({"front_port": front.server_address[1],
                      "emulator_port": emulator.server_address[1], "ca": paths["ca"]}),
          flush=True)
    sys.stdin.read()  # returns when the parent closes the pipe or dies


# ----------------------------------------------------------------------------------------------
# The parent side.

def _no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class GcsFront:
    """Starts and controls the GCS test front (a child process), see the module docstring.

    Attributes:
        env: the environment a process needs to use the front: `HTTPS_PROXY`/`HTTP_PROXY`
            (both cases), `NO_PROXY`, `CURL_CA_BUNDLE`, `STORAGE_EMULATOR_HOST`, and
            `STATIC_ENV`. Set before the process first touches gs://; the `GCS_*` tuning
            values of STATIC_ENV only take effect if set before TensorFlow is imported.
        port: the front's loopback port.
    """

    def __init__(self):
        self._proc = None
        self._dir = None
        self.port = None
        self.emulator_port = None
        self.env: dict[str, str] = {}

    def start(self, *, timeout: float = 60) -> "GcsFront":
        self._dir = tempfile.mkdtemp(prefix="gcs-front-")
        self._log = open(os.path.join(self._dir, "front.log"), "wb")
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", self._dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"GCS test front did not start within {timeout}s; "
                               f"see {self._dir}/front.log")
        info = json.loads(line)
        self.port, self.emulator_port = info["front_port"], info["emulator_port"]
        proxy = f"http://127.0.0.1:{self.port}"
        no_proxy = "127.0.0.1,localhost,::1"
        self.env = {**STATIC_ENV, "CURL_CA_BUNDLE": info["ca"],
                    "STORAGE_EMULATOR_HOST": proxy}
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
            value = no_proxy if name == "NO_PROXY" else proxy
            self.env[name] = self.env[name.lower()] = value
        return self

    def log_text(self) -> str:
        """The child's log (one line a request when GCS_FRONT_VERBOSE is set), for debugging."""
        with open(os.path.join(self._dir, "front.log"), errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
            self._log.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _call(self, port: int, method: str, path: str, body=None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with _no_proxy_opener().open(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")

    def create_bucket(self, name: str) -> str:
        """Creates bucket `name` straight in the emulator (no faults); returns `gs://name`."""
        self._call(self.emulator_port, "POST", "/storage/v1/b", {"name": name})
        return f"gs://{name}"

    def set_faults(self, every_nth_503: int = 0, hold: bool = False) -> None:
        """Answers every Nth storage request with 503; with `hold`, answers no storage request
        until the next call (then 503s the held ones).

        Also restarts the request count, so the Nth request from now on is the first 503.
        """
        self._call(self.port, "POST", "/_front/faults",
                   {"every_nth_503": every_nth_503, "hold": hold})

    def stats(self) -> dict:
        """Counters: `requests` and `injected_503` since the last set_faults, `refused`,
        `tunnels`; `by_bucket`: storage requests per bucket name since the front started (what
        a test counts when other tests' late traffic must not count)."""
        return self._call(self.port, "GET", "/_front/stats")


# ----------------------------------------------------------------------------------------------
# Pytest plugin.

def pytest_configure(config):
    """Sets the GCS_* test values before test modules import TensorFlow (it reads them then).

    They replace any value already set, e.g. the trainer's own defaults, which `import trainer`
    in conftest.py may have applied: tests run with known settings.
    """
    del config
    os.environ.update(STATIC_ENV)


_SHARED = {"front": None, "users": 0, "saved": {}}


def _acquire_front() -> GcsFront:
    """The process's one front: started (and its env applied) by the first user."""
    if _SHARED["front"] is None:
        front = GcsFront().start()
        _SHARED["saved"] = {key: os.environ.get(key) for key in front.env}
        os.environ.update(front.env)
        _SHARED["front"] = front
    _SHARED["users"] += 1
    return _SHARED["front"]


def _release_front() -> None:
    """Stops the front and restores os.environ once its last user is done."""
    _SHARED["users"] -= 1
    if _SHARED["users"] > 0:
        return
    for key, value in _SHARED["saved"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _SHARED["front"].stop()
    _SHARED["front"] = None


@pytest.fixture(scope="session")
def gcs():
    """The started GCS test front, with its `env` applied to os.environ for the session.

    One front per process, even when a test module imports this fixture and so gives pytest a
    second definition of it (see the module docstring).
    """
    front = _acquire_front()
    try:
        yield front
    finally:
        _release_front()


@pytest.fixture
def gcs_bucket(gcs):
    """A fresh, empty bucket `gs://test-…` on the front, with faults off before and after."""
    routed = {key: os.environ.get(key) for key in ("HTTPS_PROXY", "STORAGE_EMULATOR_HOST", "CURL_CA_BUNDLE")}
    wanted = {key: gcs.env[key] for key in routed}
    assert routed == wanted, (f"os.environ routes gs:// traffic elsewhere than the front that makes this "
                              f"test's bucket: {routed} vs {wanted}; a test changed these settings")
    gcs.set_faults()
    yield gcs.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
    gcs.set_faults()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="DIR", required=True)
    serve(directory=parser.parse_args().serve)
