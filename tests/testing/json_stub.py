"""A JSON-over-HTTP stub on loopback for the Vertex AI tests: one reply helper, one way to serve."""
import contextlib
import http.server
import json
import threading


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """Base handler: `reply(payload, status)` sends JSON; no access log."""

    def reply(self, payload, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> str:
        return self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serving(handler, tmp_path, **attributes):
    """(server, Vertex flags): the stub on 127.0.0.1 in a thread, with `attributes` set on the server,
    and the --api_endpoint / --access_token_file flags that point a script at it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in dict(requests=[], **attributes).items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("test-token\n")
    try:
        yield server, (f"--api_endpoint=http://127.0.0.1:{server.server_address[1]}", f"--access_token_file={token}")
    finally:
        server.shutdown()
        server.server_close()
