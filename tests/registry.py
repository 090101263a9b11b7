"""A real registry (Debian's docker-registry) for the tests, and an auth proxy in front of it.

The registry is bound to 127.0.0.1 on a free port with its own storage and
config (Debian's packaged config enables htpasswd and listens everywhere).
The proxy demands basic or bearer auth (with its own token endpoint) and
forwards to the registry, so the client's challenge handling is exercised
against real registry behaviour behind it.
"""
from __future__ import annotations

import base64
import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = self.root / "registry.log"
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.yml"
        cfg.write_text(
            "version: 0.1\n"
            "log: {level: info, accesslog: {disabled: false}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: {self.host}}}\n")
        self.proc = subprocess.Popen([shutil.which("docker-registry"), "serve", str(cfg)],
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log_path.read_text()[-2000:]}")

    def requests_log(self) -> list[str]:
        """Access-log lines ("METHOD /path") of what clients sent."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            for method in ("HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"):
                marker = f'"{method} /v2/'
                if marker in line:
                    out.append(line[line.index(marker) + 1:].split(" HTTP/")[0])
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class LocalHttp:
    """A threaded HTTP server on 127.0.0.1 (an ephemeral port) for a test's own handler."""

    def start(self, handler) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class AuthProxy(LocalHttp):
    """Forward to upstream after checking auth: mode 'basic' or 'bearer'."""

    def __init__(self, upstream: str, mode: str, user: str = "relng", password: str = "s3cret"):
        self.upstream, self.mode, self.user, self.password = upstream, mode, user, password
        self.token = "tok-" + base64.b16encode(f"{user}{mode}".encode()).decode()
        self.token_requests: list[dict] = []
        self.challenges = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _deny(self):
                proxy.challenges += 1
                self.send_response(401)
                if proxy.mode == "basic":
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                else:
                    self.send_header("WWW-Authenticate",
                                     f'Bearer realm="http://{proxy.host}/token",service="test-registry"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/token"):
                    import urllib.parse
                    q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    creds = self.headers.get("Authorization", "")
                    ok = creds == "Basic " + base64.b64encode(f"{proxy.user}:{proxy.password}".encode()).decode()
                    proxy.token_requests.append({"scope": q.get("scope", []), "service": q.get("service"), "ok": ok})
                    data = (b'{"token": "%s"}' % proxy.token.encode()) if ok else b"{}"
                    self.send_response(200 if ok else 401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                auth = self.headers.get("Authorization", "")
                want = (f"Bearer {proxy.token}" if proxy.mode == "bearer" else
                        "Basic " + base64.b64encode(f"{proxy.user}:{proxy.password}".encode()).decode())
                if self.path.startswith("/v2/") and auth != want:
                    return self._deny()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host", "content-length")}
                headers["Host"] = proxy.host
                r = requests.request(self.command, f"http://{proxy.upstream}{self.path}", data=body or None,
                                     headers=headers, allow_redirects=False, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                content = r.content if self.command != "HEAD" else b""
                self.send_header("Content-Length", str(len(content) if self.command != "HEAD" else r.headers.get("Content-Length", 0)))
                self.end_headers()
                if content:
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.start(Handler)


class TlsStandIn(requests.adapters.HTTPAdapter):
    """Stands for TLS in front of a plain-HTTP test server: mounted on a session for
    ``https://HOST:PORT``, it sends those requests to ``http://HOST:PORT`` and gives the
    answers back under the https URL, so the client behaves as towards an https registry."""

    def send(self, request, **kw):
        https = request.url
        request.url = "http://" + https[len("https://"):]
        try:
            r = super().send(request, **kw)
        finally:
            request.url = https
        r.url = https
        return r
