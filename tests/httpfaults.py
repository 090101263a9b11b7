"""A local HTTP server that serves a directory and injects faults on request.

``server.plan(path, ["reset", "500", "ok"])`` makes the next requests for path
behave that way, in order; afterwards requests are served normally.
``ScriptedServer`` answers with test functions instead (hostile servers:
endless or trickling bodies, echoed headers, garbage documents).
"""
from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from pathlib import Path


class FaultServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.plans: dict[str, list[str]] = {}
        self.log: list[tuple[str, str, str]] = []   # (path, behaviour, range header)
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    queue = server.plans.get(path) or []
                    behaviour = queue.pop(0) if queue else "ok"
                    server.log.append((path, behaviour, self.headers.get("Range", "")))
                if behaviour.startswith("slow:"):
                    time.sleep(float(behaviour[5:]))
                    behaviour = "ok"
                if behaviour == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if behaviour == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                if behaviour == "wrong":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and behaviour != "ignore-range":
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if behaviour in ("reset", "truncate"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if behaviour == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, path: str, behaviours: list[str]) -> None:
        with self.lock:
            self.plans[path] = list(behaviours)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ScriptedServer:
    """A 127.0.0.1 server whose answers are test functions: ``server.route(path, fn)``, fn(handler).

    Every request is logged as (method, path with query, headers); ``sent[path]``
    counts the body bytes a streaming answer managed to write. ``route_prefix``
    answers the paths no exact route names (a fake registry's many digests).
    """

    def __init__(self):
        self.routes: dict = {}
        self.prefixes: list = []
        self.requests: list[tuple[str, str, dict]] = []
        self.sent: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                path = self.path.split("?")[0]
                server.requests.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fn = server.routes.get(path) or next((f for p, f in server.prefixes if path.startswith(p)),
                                                     None) or reply(404)
                try:
                    fn(self)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def route(self, path: str, fn) -> None:
        self.routes[path] = fn

    def route_prefix(self, prefix: str, fn) -> None:
        self.prefixes.append((prefix, fn))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status: int, body: bytes = b"", headers: dict | None = None):
    def answer(h):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
    return answer


def endless(total: int, announce: bool = True, chunk: int = 1 << 16, byte: bytes = b" ", every: float = 0.0,
            server: "ScriptedServer | None" = None):
    """A 200 whose body is ``total`` bytes made up on the fly (nothing that large is ever allocated):
    with Content-Length when ``announce``, else chunked; ``every`` seconds between writes."""
    block = byte * chunk

    def answer(h):
        path = h.path.split("?")[0]
        h.send_response(200)
        if announce:
            h.send_header("Content-Length", str(total))
        else:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        left = total
        while left > 0:
            piece = block[:min(chunk, left)]
            h.wfile.write(piece if announce else b"%x\r\n%s\r\n" % (len(piece), piece))
            h.wfile.flush()
            left -= len(piece)
            if server is not None:
                server.sent[path] = server.sent.get(path, 0) + len(piece)
            if every:
                time.sleep(every)
        if not announce:
            h.wfile.write(b"0\r\n\r\n")
    return answer


def trickle_head(every: float = 0.05, total: int = 1 << 20):
    """A status line and then one header trickled a byte every ``every`` seconds: no read
    timeout ever trips and no body ever starts (only an overall deadline ends it)."""
    def answer(h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        h.wfile.flush()
        for _ in range(total):
            h.wfile.write(b"a")
            h.wfile.flush()
            time.sleep(every)
        h.close_connection = True
    return answer


def silent(seconds: float):
    """Read the request and say nothing for ``seconds`` (then hang up): a server that never answers."""
    def answer(h):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)
        h.close_connection = True
    return answer
