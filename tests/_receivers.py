"""Loopback HTTP receivers for the upload tests: TCP, TLS or a unix socket.

A ``Receiver`` accepts connections on a thread, reads one HTTP/1.1 request
per connection and answers it as its script says. The script is a list of
actions, one per request, in arrival order (``default`` once it runs out):

    200, 500, 400 ...  read the whole request, answer with this status
    (429, {"Retry-After": "2"})
                       the same with these response headers (a callable
                       value is called when the answer is sent)
    "close"            read the request headers, then close the connection
                       without reading the body or answering
    "hang"             read the whole request and never answer (the
                       connection stays open until the receiver is closed)

Every request whose headers arrived is recorded in ``requests`` (``body`` is
None for "close"; ``time`` is when its headers arrived, epoch seconds). Written from the HTTP/1.1 message format only; no test
depends on a third-party server.
"""

import os
import socket
import ssl
import threading
import time

__all__ = ["Receiver", "Request", "free_port", "free_ports"]

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}
MAX_HEADER_BYTES = 64 * 1024
IO_TIMEOUT = 15.0


def free_ports(n):
    """n distinct loopback TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    """A loopback port nobody listens on (connecting to it is refused)."""
    return free_ports(1)[0]


class Request(object):
    """One received request."""

    def __init__(self, method, target, version, headers, body, tls, action):
        self.time = time.time()
        self.method = method
        self.path = target
        self.version = version
        self.headers = headers  # [(name, value)] in arrival order
        self.body = body        # bytes, or None when not read
        self.tls = tls          # {"version": ..., "cipher": ...} or None
        self.action = action

    def header(self, name):
        """Value of the first header called name (any case), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def raw_headers(self):
        return "".join("%s: %s\r\n" % kv for kv in self.headers)

    def __repr__(self):
        return "<Request %s %s action=%r body=%s>" % (
            self.method, self.path, self.action,
            None if self.body is None else len(self.body))


class _Conn(object):
    """Buffered reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("peer closed the connection")
        self.buf += chunk

    def read_until(self, marker, limit):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("header section too large")
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_chunked(self):
        out = b""
        while True:
            size_line = self.read_until(b"\r\n", 1024)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                self.read_until(b"\r\n", MAX_HEADER_BYTES)  # (no trailers)
                return out
            out += self.read_exact(size)
            self.read_exact(2)


class Receiver(object):
    """A scripted HTTP/1.1 receiver on 127.0.0.1 (TCP, optionally TLS) or a
    unix socket path. Use as a context manager."""

    def __init__(self, actions=(), default=200, unix_path=None, ssl_context=None):
        self.actions = list(actions)
        self.default = default
        self.unix_path = unix_path
        self.ssl_context = ssl_context
        self.requests = []
        self.connections = 0
        self.tls_errors = []
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._open = []
        self._listener = None
        self.port = None

    # -- lifecycle --------------------------------------------------------
    def start(self):
        if self.unix_path is not None:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(self.unix_path)
        else:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            self.port = ls.getsockname()[1]
        ls.listen(16)
        ls.settimeout(0.05)
        self._listener = ls
        t = threading.Thread(target=self._accept_loop, name="receiver-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self):
        self._stop.set()
        with self._lock:
            conns, self._open = self._open, []
        for c in conns:  # wakes a connection thread blocked in recv()
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)
        for c in conns:
            self._close(c)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.unix_path is not None and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def url(self):
        """Base URL for DD_TRACE_AGENT_URL (no path)."""
        if self.unix_path is not None:
            return "unix://" + self.unix_path
        scheme = "https" if self.ssl_context is not None else "http"
        return "%s://127.0.0.1:%d" % (scheme, self.port)

    # -- serving ----------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="receiver-conn",
                                 daemon=True)
            t.start()
            with self._lock:
                self._threads.append(t)

    def _next_action(self):
        with self._lock:
            if self.actions:
                return self.actions.pop(0)
            return self.default

    def _serve(self, sock):
        conn_sock = sock
        tls = None
        try:
            sock.settimeout(IO_TIMEOUT)
            if self.ssl_context is not None:
                try:
                    conn_sock = self.ssl_context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    with self._lock:
                        self.tls_errors.append(repr(exc))
                    return
                with self._lock:
                    self._open.append(conn_sock)
                tls = {"version": conn_sock.version(), "cipher": conn_sock.cipher()[0]}
            self._handle(_Conn(conn_sock), tls)
        except Exception as exc:  # recorded; the test decides whether it matters
            with self._lock:
                self.errors.append(repr(exc))
        finally:
            self._close(conn_sock)
            self._close(sock)

    def _close(self, s):
        try:
            s.close()
        except OSError:
            pass

    def _handle(self, conn, tls):
        head = conn.read_until(b"\r\n\r\n", MAX_HEADER_BYTES).decode("iso-8859-1")
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        action = self._next_action()
        req = Request(method, target, version, headers, None, tls, action)
        if action == "close":
            with self._lock:
                self.requests.append(req)
            return
        te = (req.header("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            req.body = conn.read_chunked()
        else:
            req.body = conn.read_exact(int(req.header("Content-Length") or 0))
        with self._lock:
            self.requests.append(req)
        if action == "hang":
            self._stop.wait(60)
            return
        extra = {}
        if isinstance(action, tuple):
            action, extra = action
        status = int(action)
        body = b"{}" if status < 300 else b"receiver says no"
        more = "".join("%s: %s\r\n" % (k, v() if callable(v) else v) for k, v in extra.items())
        response = ("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                    "%sConnection: close\r\n\r\n" % (status, REASONS.get(status, "Status"),
                                                     len(body), more)).encode("ascii") + body
        conn.sock.sendall(response)
