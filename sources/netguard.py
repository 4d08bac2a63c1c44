"""The fetch stage's connection layer: one deadline for a whole request, and the address guard applied to
the very address each connection goes to (`GuardedAdapter`, mounted on `sources.http.Fetcher`'s session).

Why not requests' own timeouts: `timeout` bounds each socket operation, not their sum, so a server that
sends one byte just inside it (in the body or in the header block) holds a thread for as long as it
likes. How: every socket fetch opens is a `DeadlineSocket` (or, for TLS, a `DeadlineSSLSocket`, via the
SSL context's `sslsocket_class`), whose blocking calls (connect, the TLS handshake, each send and recv)
first set the socket's timeout to the smaller of the configured timeout and the time left before the
deadline of the request running on this thread (`deadline_scope`), and fail once none is left. DNS, which
no socket timeout reaches, runs on a small resolver pool and is waited for only until the deadline. So
connect, TLS, headers, body and every redirect hop draw on one deadline, with no watchdog thread: a
watchdog closing sockets from outside races the thread using them, and cannot see a pooled connection
that a later request reuses. A timed-out socket is closed by urllib3 as on any timeout: nothing leaks.

Why the guard sits here and not before the request: checking a URL's host before requests resolves it
again leaves a window (DNS rebinding) and misses nothing less than the redirect hops requests would
follow; here the addresses checked are the ones connected to, for every hop and every retry.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.certs import where as ca_bundle
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.ssl_ import create_urllib3_context

from editgen.sources.addresses import BlockedAddress, check_public

_scope = threading.local()


class DeadlineExceeded(TimeoutError):
    """The request's whole deadline (fetch.max_seconds) passed: a socket timeout to urllib3 and requests."""


@contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Every socket operation of fetch's connections on this thread ends by `deadline` (time.monotonic)."""
    previous = getattr(_scope, "deadline", None)
    _scope.deadline = deadline
    try:
        yield
    finally:
        _scope.deadline = previous


def time_left() -> float | None:
    """Seconds left before this thread's deadline, or None outside a deadline_scope."""
    deadline = getattr(_scope, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


class _DeadlineIO:
    """Mixed into a socket class: each blocking call first bounds the socket's timeout by the deadline."""

    _base_timeout: float | None = None

    def settimeout(self, value: float | None) -> None:
        self._base_timeout = value
        super().settimeout(value)  # type: ignore[misc]

    def _bound(self) -> None:
        left = time_left()
        if left is None:
            super().settimeout(self._base_timeout)  # type: ignore[misc]
            return
        if left <= 0:
            raise DeadlineExceeded("the request's deadline (fetch.max_seconds) passed")
        base = self._base_timeout
        super().settimeout(left if base is None else min(base, left))  # type: ignore[misc]

    def connect(self, *args: Any) -> Any:
        self._bound()
        return super().connect(*args)  # type: ignore[misc]

    def recv(self, *args: Any) -> Any:
        self._bound()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any) -> Any:
        self._bound()
        return super().recv_into(*args)  # type: ignore[misc]

    def send(self, *args: Any) -> Any:
        self._bound()
        return super().send(*args)  # type: ignore[misc]

    def sendall(self, *args: Any) -> Any:
        self._bound()
        return super().sendall(*args)  # type: ignore[misc]


class DeadlineSocket(_DeadlineIO, socket.socket):
    """A TCP socket bounded by the request deadline."""


class DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
    """A TLS socket bounded by the request deadline: the handshake and `read` too (recv/recv_into go
    through `read`; the handshake's own timeout covers the whole handshake in CPython)."""

    def do_handshake(self, *args: Any) -> Any:
        self._bound()
        return super().do_handshake(*args)

    def read(self, *args: Any) -> Any:
        self._bound()
        return super().read(*args)


class ConnectPolicy:
    """How fetch's connections reach an address: resolved within the deadline, every answer checked when
    `block_private` (one refused address refuses the host), then connected to in order."""

    def __init__(self, block_private: bool, resolver_threads: int) -> None:
        self.block_private = block_private
        self._pool = ThreadPoolExecutor(resolver_threads, thread_name_prefix="fetch-dns")

    def close(self) -> None:
        """Lookups still running end when the system resolver gives up (resolv.conf timeout x attempts)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """getaddrinfo, waited for until the deadline. Numeric hosts in every spelling getaddrinfo accepts
        (127.1, 0x7f000001, 2130706433, [::ffff:7f00:1]) are parsed without a lookup."""
        try:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        left = time_left()
        if left is None:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        if left <= 0:
            raise DeadlineExceeded(f"no time left to look up {host}")
        lookup = self._pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            return lookup.result(timeout=left)
        except FutureTimeout:
            lookup.cancel()
            raise DeadlineExceeded(f"looking up {host} took past the deadline (fetch.max_seconds)") from None

    def connect(self, host: str, port: int, timeout: object, options: list[tuple[Any, ...]] | None) -> socket.socket:
        host = host.strip("[]")
        infos = self.resolve(host, port)
        if self.block_private:
            check_public(host, [str(info[4][0]) for info in infos])
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, address in infos:
            sock = DeadlineSocket(family, kind, proto)
            try:
                for option in options or ():
                    sock.setsockopt(*option)
                sock.settimeout(float(timeout) if isinstance(timeout, int | float) else None)
                sock.connect(address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error


class _GuardedConnection:
    """Mixed into urllib3's connection classes: sockets come from the adapter's ConnectPolicy."""

    policy: ConnectPolicy

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        try:
            return self.policy.connect(conn._dns_host, conn.port, conn.timeout, conn.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out ({exc})") from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class GuardedAdapter(HTTPAdapter):
    """requests' adapter on guarded, deadline-bound connections; no proxies (a proxy resolves names itself,
    out of the guard's sight), one TLS context with the CA bundle loaded once."""

    def __init__(self, policy: ConnectPolicy, pool_size: int) -> None:
        self.policy = policy
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        context = create_urllib3_context()
        context.load_verify_locations(ca_bundle())
        context.sslsocket_class = DeadlineSSLSocket
        super().init_poolmanager(connections, maxsize, block, ssl_context=context, **pool_kwargs)
        attrs = {"policy": self.policy}
        http = type("GuardedHTTPConnection", (_GuardedConnection, HTTPConnection), attrs)
        https = type("GuardedHTTPSConnection", (_GuardedConnection, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if verify is True:  # the default bundle is in the shared context already
            conn.ca_certs = conn.ca_cert_dir = None

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise requests.exceptions.InvalidURL("fetch connects directly: a proxy would bypass the address guard")


__all__ = ["BlockedAddress", "ConnectPolicy", "DeadlineExceeded", "GuardedAdapter", "deadline_scope", "time_left"]
