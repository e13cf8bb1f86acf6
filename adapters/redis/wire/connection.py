"""A lean asyncio Redis connection for the API's lookups: every request in flight shares one socket.

redis-py's asyncio client checks a connection out of its pool, writes, waits, parses and checks the
connection back in for every command. At 16 concurrent lookups that bookkeeping cost more CPU than the
rest of the request, and the API served 33-35% of bare Starlette's rate (docs/redis.md). Here a command is
packed by hiredis, queued on one connection and answered by the C parser as replies stream back; Redis
answers a connection's commands in order, so a FIFO of futures pairs each reply with its caller
(pipelining). The commands queued during one turn of the event loop leave in one ``send``.

Only what the read side needs: single commands, pipelined batches, the handshake of
:func:`.protocol.hello` (AUTH / SELECT / CLIENT SETNAME), TLS, TCP keepalive (:mod:`.sockets`). A lost
connection fails the commands in flight with :class:`StoreUnavailable`; the next call reconnects, and a read
sent on a connection that turned out dead is sent again once (reads are idempotent). A connection that
answers nothing for ``timeout_s`` while commands wait is dropped. Error replies mean what the reply table
says (:data:`.protocol.REPLIES`); socket failures what :data:`.sockets.SOCKET_FAILURES` says.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Sequence
from typing import Any, cast

import hiredis

from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.protocol import Arg, hello, pack, reply_error
from precompute.adapters.redis.wire.sockets import keepalive, socket_error, ssl_context
from precompute.store import StoreUnavailable


class ConnectionLost(StoreUnavailable):
    """The server closed the connection with commands in flight (they are worth sending once more)."""


class _Pipe(asyncio.Protocol):
    """One socket: a FIFO of (future, replies it takes) and a write buffer flushed once per loop turn."""

    def __init__(self, where: str, timeout_s: float) -> None:
        self.where = where
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = hiredis.Reader()
        # count 0: the future takes one reply as it is; n > 0: it takes a list of the next n replies.
        self.waiting: collections.deque[tuple[asyncio.Future[Any], int]] = collections.deque()
        self.gathered: list[Any] = []
        self.outgoing: list[bytes] = []
        self.lost: StoreUnavailable | None = None
        self.replies = 0
        self.watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:  # asyncio's and uvloop's both expose setsockopt on it
            keepalive(sock)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        try:
            while (reply := self.parser.gets()) is not False:
                self.replies += 1
                future, count = self.waiting[0]
                if count:
                    self.gathered.append(reply)
                    if len(self.gathered) < count:
                        continue
                    reply, self.gathered = self.gathered, []
                self.waiting.popleft()
                if future.done():  # its caller was cancelled; the reply was still owed
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(reply_error(self.where, str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.drop(StoreUnavailable(f"{self.where} sent a reply that does not parse ({exc!r})"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"closed the connection ({exc})" if exc else "closed the connection"
        self.fail(ConnectionLost(f"{self.where} {reason}"))

    # -- requests -----------------------------------------------------------------------------------

    def request(self, packed: bytes, count: int = 0) -> asyncio.Future[Any]:
        """Queue one packed command (``count`` 0) or a pipeline of ``count`` packed commands."""
        if self.lost is not None:
            raise self.lost
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(packed)
        self.waiting.append((future, count))
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout_s, self.watch, self.replies)
        return future

    def flush(self) -> None:
        if self.outgoing and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def watch(self, replies_then: int) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        if self.replies == replies_then:
            self.drop(StoreUnavailable(f"{self.where} did not answer within {self.timeout_s:g} s (option timeout=)"))
        else:
            self.watchdog = self.loop.call_later(self.timeout_s, self.watch, self.replies)

    # -- endings ------------------------------------------------------------------------------------

    def drop(self, error: StoreUnavailable) -> None:
        """Fail everything in flight with ``error`` (not retried) and abort the socket."""
        self.fail(error)
        if self.transport is not None:
            self.transport.abort()

    def fail(self, error: StoreUnavailable) -> None:
        if self.lost is None:
            self.lost = error
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.outgoing.clear()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)
                future.exception()  # retrieved here: a cancelled caller must not log "never retrieved"

    def close(self) -> None:
        self.fail(StoreUnavailable(f"{self.where}: the client was closed"))
        if self.transport is not None:
            self.transport.close()


class PipelinedConnection:
    """One pipelined connection to a standalone Redis (or Memorystore), opened on first use."""

    def __init__(self, options: RedisOptions, where: str) -> None:
        self.options = options
        self.where = where
        self._pipe: _Pipe | None = None
        self._opening: asyncio.Future[_Pipe] | None = None

    async def call(self, *args: Arg) -> Any:
        """One command's reply (an error reply raises the store error the reply table names)."""
        return await self._send(pack(*args), 0)

    async def call_many(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """The replies of ``commands``, sent as one pipeline; an error reply is returned in its place."""
        if not commands:
            return []
        replies: list[Any] = await self._send(b"".join(pack(*c) for c in commands), len(commands))
        return replies

    async def _send(self, packed: bytes, count: int) -> Any:
        pipe = self._pipe
        if pipe is None or pipe.lost is not None:
            return await (await self._open()).request(packed, count)
        try:
            return await pipe.request(packed, count)
        except ConnectionLost:  # opened earlier and closed since (a restart, a failover): once more, fresh
            return await (await self._open()).request(packed, count)

    async def _open(self) -> _Pipe:
        # Concurrent callers wait for the same connect rather than opening one each.
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._connect())
            self._opening.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._opening)

    async def _connect(self) -> _Pipe:
        o = self.options
        pipe: _Pipe | None = None
        context = ssl_context(o) if o.tls else None
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                _, pipe = await asyncio.get_running_loop().create_connection(
                    lambda: _Pipe(self.where, o.timeout_s), o.host, o.port, ssl=context
                )
                commands = hello(o)
                replies = await pipe.request(b"".join(pack(*c) for c in commands), len(commands))
            refused = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if refused:  # a password the server does not take, a database it does not have...
                raise reply_error(self.where, str(refused[0]))
        except BaseException as exc:
            if pipe is not None:
                pipe.close()
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    f"{self.where} is unreachable: not connected within {o.connect_timeout_s:g} s "
                    "(option connect_timeout=)"
                ) from None
            if isinstance(exc, OSError):
                raise socket_error(self.where, exc) from exc
            raise
        old, self._pipe = self._pipe, pipe
        if old is not None:
            old.close()
        return pipe

    async def aclose(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
