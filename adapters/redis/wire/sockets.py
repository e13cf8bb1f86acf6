"""Sockets to Redis: TCP keepalive, the TLS context, what socket failures mean, and a blocking connect.

**Keepalive.** A server that vanishes without closing its connections (a VM stopped, a network partition,
a failover that moves the address) leaves a connection that looks open. With no request in flight nothing
notices; the next lookup then waits its whole ``timeout``. Every socket of the adapter (the API's
connections, the bulk pipeline's, and redis-py's, through its ``socket_keepalive_options``) asks the kernel
to probe after :data:`KEEPALIVE_IDLE_S` seconds of silence, every :data:`KEEPALIVE_INTERVAL_S` seconds, and
to drop the connection after :data:`KEEPALIVE_PROBES` unanswered probes: a silently dead server is noticed
within ~25 s instead of the kernel's default two hours. The probes cost one empty packet per idle
connection every 10 s, nothing while requests flow.
"""

from __future__ import annotations

import socket
import ssl

import hiredis

from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.protocol import Address, Arg, Failure, hello, pack, reply_error
from precompute.store import StoreConfigError, StoreError, StoreUnavailable

KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 3


def keepalive_options() -> dict[int, int]:
    """The TCP-level keepalive settings this platform has (redis-py's ``socket_keepalive_options``)."""
    # Linux names the idle time TCP_KEEPIDLE, macOS TCP_KEEPALIVE; a platform without one keeps its default.
    wanted = (
        ("TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    )
    return {getattr(socket, name): value for name, value in wanted if hasattr(socket, name)}


def keepalive(sock: socket.socket) -> None:
    """Turn on SO_KEEPALIVE with the probes of :func:`keepalive_options` on a connected TCP socket."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in keepalive_options().items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def ssl_context(o: RedisOptions) -> ssl.SSLContext:
    """The checks redis-py makes for ``rediss://`` (``ssl_cert_reqs``, ``ssl_ca_certs``, the host name)."""
    try:
        context = ssl.create_default_context(cafile=o.ssl_ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise StoreConfigError(
            f"option ssl_ca_certs={o.ssl_ca_certs!r} cannot be read as PEM CA certificates ({exc}). "
            "Fix: point it at the CA file of the server's certificate"
        ) from None
    context.check_hostname = o.ssl_check_hostname and o.ssl_cert_reqs != "none"
    context.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[
        o.ssl_cert_reqs
    ]
    return context


_UNREACHABLE = Failure(StoreUnavailable, "is unreachable")

#: What a socket-level failure means, looked up by the exception's class (most specific first).
SOCKET_FAILURES: dict[type[BaseException], Failure] = {
    ssl.SSLCertVerificationError: Failure(
        StoreConfigError,
        "presented a TLS certificate that does not verify. Fix: ssl_ca_certs= naming the CA that signed it, "
        "or ssl_check_hostname=false when the certificate names another host",
    ),
    # The connection ended during TLS: a server going away, like any other reset.
    ssl.SSLEOFError: _UNREACHABLE,
    ssl.SSLZeroReturnError: _UNREACHABLE,
    ssl.SSLSyscallError: _UNREACHABLE,
    ssl.SSLError: Failure(
        StoreConfigError,
        "failed the TLS handshake. Fix: check that the port speaks TLS and takes a TLS version this client offers",
    ),
    TimeoutError: Failure(StoreUnavailable, "did not answer in time (options connect_timeout= and timeout=)"),
    OSError: _UNREACHABLE,  # refused, reset, no route, DNS
}


def socket_failure(exc: BaseException) -> Failure | None:
    """The entry of :data:`SOCKET_FAILURES` for ``exc``, or ``None`` for an exception that is no socket failure."""
    for cls in type(exc).__mro__:
        if cls in SOCKET_FAILURES:
            return SOCKET_FAILURES[cls]
    return None


def socket_error(where: str, exc: BaseException) -> StoreError:
    failure = socket_failure(exc) or _UNREACHABLE
    return failure.error(where, str(exc) or type(exc).__name__)


def request(sock: socket.socket, commands: list[tuple[Arg, ...]], where: str) -> list[object]:
    """Send ``commands`` on a blocking socket and read their replies (an error reply is returned in its place)."""
    sock.sendall(b"".join(pack(*c) for c in commands))
    parser = hiredis.Reader()
    replies: list[object] = []
    while len(replies) < len(commands):
        data = sock.recv(1 << 16)
        if not data:
            raise StoreUnavailable(f"{where} closed the connection")
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            replies.append(reply)
    return replies


def open_socket(o: RedisOptions, address: Address, where: str) -> socket.socket:
    """A blocking socket to ``address``, connected (TLS for ``rediss://``), keepalive on, handshake done.

    Connecting takes at most ``connect_timeout``; every later send or receive at most ``timeout``. A failure
    raises the store's error: unreachable, timed out, refused credentials, a certificate that does not verify.
    """
    context = ssl_context(o) if o.tls else None
    try:
        sock = socket.create_connection(address, timeout=o.connect_timeout_s)
    except OSError as exc:
        raise socket_error(where, exc) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a short handshake is not held back
        keepalive(sock)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=address[0])
        sock.settimeout(o.timeout_s)
        for reply in request(sock, hello(o), where):
            if isinstance(reply, hiredis.ReplyError):
                raise reply_error(where, str(reply))
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise socket_error(where, exc) from exc
        raise
    return sock
