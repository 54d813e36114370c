"""An HTTP proxy on 127.0.0.1 in front of a test server (moto, SeaweedFS) that can rewrite replies
and delay requests: an SQS-compatible endpoint that misbehaves, or a slow network, without
patching boto3. The client is pointed at :attr:`Proxy.url` (``endpoint_url=``); every request is
forwarded to the upstream endpoint as it came and the reply goes back through :attr:`Proxy.rewrite`.

    def strip(request_headers, request_body, status, response_headers, response_body):
        return status, response_headers, response_body.replace(b"x", b"y")

    with Proxy(moto.endpoint, rewrite=strip, delay=lambda request: 0.02) as proxy:
        SqsQueues(endpoint_url=proxy.url)

- ``rewrite(request_headers, request_body, status, response_headers, response_body) -> (status,
  response_headers, response_body)``: ``request_headers`` is case-insensitive (``.get()``), the
  response headers a list of ``(name, value)`` pairs; the proxy sets ``Content-Length`` from the
  body it sends (and drops hop-by-hop headers), so a hook only changes what it means to change.
- ``delay(request) -> seconds``: slept before the request is forwarded (the :class:`Request` has
  method, path, headers and body), e.g. a fixed latency per call or per SQS action.
- ``reply_delay(request, status) -> seconds``: slept after the upstream answered, before the reply
  goes back (the return leg of a round trip: a long poll that returns a message then delivers it
  this much later than the upstream did). It gets the same :class:`Request` object as ``delay``.

botocore's SQS speaks the JSON protocol: a POST to ``/`` with ``X-Amz-Target: AmazonSQS.<Action>``
and a JSON reply; :func:`sqs_action` reads the action. S3 requests are forwarded as they are.

Bounded: use it as a context manager (or call :meth:`Proxy.close`, which also cuts the client
connections still open); its threads are daemons, a client connection idle for ``idle_timeout``
seconds is closed, an upstream call gives up after
``upstream_timeout`` seconds (above SQS's 20 s long poll) and answers 502, and a hook that raises
answers 500 with the error, so nothing here can hang a test.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit


class RequestHeaders(Protocol):
    """A request's headers, looked up case-insensitively (``headers.get("X-Amz-Target")``)."""

    def get(self, name: str, /) -> str | None: ...


Headers = list[tuple[str, str]]
Rewrite = Callable[[RequestHeaders, bytes, int, Headers, bytes], tuple[int, Headers, bytes]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})
"""Headers that belong to one connection (and Content-Length, which the proxy sets itself)."""


@dataclass(frozen=True)
class Request:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: RequestHeaders
    body: bytes

    @property
    def sqs_action(self) -> str | None:
        return sqs_action(self.headers)


def sqs_action(headers: RequestHeaders | Mapping[str, str]) -> str | None:
    """The SQS action of a JSON-protocol request (``ReceiveMessage``...), None for anything else."""
    target = headers.get("X-Amz-Target") or ""
    service, _, action = target.partition(".")
    return action if service == "AmazonSQS" and action else None


class Proxy:
    """A threaded HTTP proxy to ``upstream`` (``http://host:port``) on a free port of 127.0.0.1.

    Attributes:
        url: the endpoint to give clients.
        actions: requests forwarded so far, by SQS action (``"other"`` for the rest).
        rewrite, delay, reply_delay: the hooks; any may be replaced while the proxy runs.
    """

    def __init__(
        self,
        upstream: str,
        rewrite: Rewrite | None = None,
        delay: Callable[[Request], float] | None = None,
        *,
        reply_delay: Callable[[Request, int], float] | None = None,
        upstream_timeout: float = 60.0,
        idle_timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the proxy forwards to an http:// endpoint, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.rewrite = rewrite
        self.delay = delay
        self.reply_delay = reply_delay
        self.upstream_timeout = upstream_timeout
        self.actions: Counter[str] = Counter()
        self.errors: list[str] = []
        """Failures inside the proxy (an upstream that cannot be reached, a hook that raised)."""
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        proxy = self

        class Handler(_Handler):
            owner = proxy
            timeout = idle_timeout

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"proxy-{port}",
            daemon=True,
        )
        self._thread.start()

    def count(self, request: Request) -> None:
        with self._lock:
            self.actions[request.sqs_action or "other"] += 1

    def failed(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def close(self) -> None:
        """Stop accepting requests, close the listening socket and cut the client connections
        still open (a kept-alive one would otherwise go on being served); idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its client

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    """One client connection (kept alive across requests), with its own upstream connection."""

    owner: Proxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows what the tests assert

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _call_upstream(self, body: bytes) -> tuple[int, Headers, bytes]:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed meanwhile
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    self.owner.upstream_host, self.owner.upstream_port, timeout=self.owner.upstream_timeout
                )
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                reply = self._upstream.getresponse()
                data = reply.read()
            except (ConnectionError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
                continue
            if reply.will_close:
                self._upstream.close()
                self._upstream = None
            return reply.status, list(reply.getheaders()), data
        raise AssertionError("unreachable")

    def _forward(self) -> None:
        body = self._read_body()
        request = Request(self.command, self.path, self.headers, body)
        self.owner.count(request)
        try:
            seconds = self.owner.delay(request) if self.owner.delay is not None else 0.0
            if seconds > 0:
                time.sleep(seconds)  # the injected latency itself, not a synchronisation
        except Exception:  # noqa: BLE001 - reported as a 500 and in Proxy.errors
            self._answer_error(500, f"proxy delay hook failed:\n{traceback.format_exc()}")
            return
        try:
            status, headers, data = self._call_upstream(body)
        except (OSError, http.client.HTTPException) as exc:
            self._answer_error(502, f"proxy: upstream {self.owner.upstream_host}:{self.owner.upstream_port} "
                                    f"failed: {exc!r}")
            return
        try:
            seconds = self.owner.reply_delay(request, status) if self.owner.reply_delay is not None else 0.0
            if seconds > 0:
                time.sleep(seconds)  # the injected latency of the return leg, not a synchronisation
        except Exception:  # noqa: BLE001 - reported as a 500 and in Proxy.errors
            self._answer_error(500, f"proxy reply_delay hook failed:\n{traceback.format_exc()}")
            return
        upstream_length = next((v for k, v in headers if k.lower() == "content-length"), None)
        if self.owner.rewrite is not None:
            try:
                status, headers, data = self.owner.rewrite(self.headers, body, status, headers, data)
            except Exception:  # noqa: BLE001 - reported as a 500 and in Proxy.errors
                self._answer_error(500, f"proxy rewrite hook failed:\n{traceback.format_exc()}")
                return
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":  # no body: keep the size of the object the reply describes
            self.send_header("Content-Length", upstream_length or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _answer_error(self, status: int, text: str) -> None:
        self.owner.failed(text)
        data = text.encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def setup(self) -> None:
        super().setup()
        self.owner.opened(self.connection)

    def finish(self) -> None:
        self.owner.closed(self.connection)
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
