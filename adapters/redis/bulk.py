"""Bulk commands for loads and gc: hand-packed RESP, non-transactional pipelines, replies read in bulk.

redis-py's pipeline costs several microseconds of Python per command on each side (packing, then one
parser call per reply); a load sends hundreds of thousands of commands. Here each command is packed
with one ``%`` format, packed pieces go out as soon as they are ready (256 KB per ``sendall``), and
as every command used (HSET, EXPIREAT, UNLINK, HLEN) answers with one line, the replies are counted
by their line ends in the raw bytes instead of being parsed one by one. In Cluster mode commands are
grouped by the node that owns their slot and every node's pipeline is in flight at the same time.

A load submits the next chunk before collecting the replies of the previous one, on the same
connection (so the server applies them in order): the server works on one chunk while this process
groups and packs the next, instead of each waiting for the other.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.cluster

#: One command: (the key that routes it, its packed RESP bytes).
Command = tuple[bytes, bytes]

_ARG = b"$%d\r\n%s\r\n"
#: Bytes per sendall: large enough to amortize the call, small enough that the server starts
#: working on the first chunk while the next is still being packed.
_SEND_BYTES = 256 * 1024
#: Error replies worth retrying after a topology refresh: the cluster is moving or failing over.
RETRYABLE = (b"-MOVED", b"-ASK", b"-TRYAGAIN", b"-CLUSTERDOWN", b"-LOADING", b"-BUSY", b"-MASTERDOWN", b"-READONLY")


def hset_fields(payload: bytes) -> list[bytes]:
    """The fields (row keys) of a packed HSET, to name them in an error; other commands have none."""
    args: list[bytes] = []
    pos = payload.index(b"\r\n") + 2
    while pos < len(payload):
        end = payload.index(b"\r\n", pos)
        start = end + 2
        args.append(payload[start : start + int(payload[pos + 1 : end])])
        pos = start + len(args[-1]) + 2
    return args[2::2] if args[:1] == [b"HSET"] else []


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join([_ARG % (len(a), a) for a in args])


class _Held:
    """A pooled connection held across submits, with the reply bytes read past the last collect."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = pool.get_connection()
        self.rest = b""
        self.buffer: list[bytes] = []
        self.size = 0

    def add(self, payload: bytes) -> None:
        self.buffer.append(payload)
        self.size += len(payload)
        if self.size >= _SEND_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            data, self.buffer, self.size = b"".join(self.buffer), [], 0
            self.conn.send_packed_command([data], check_health=False)

    def read(self, count: int) -> list[bytes]:
        # The connection's own parser is idle while we hold it, so its socket carries exactly the
        # replies to what we sent. Counting b"\n" cannot miss a line end split across two reads.
        conn = self.conn
        sock: socket.socket | None = conn._sock
        if sock is None:
            raise redis.ConnectionError(f"the connection to {conn.host}:{conn.port} is closed")
        chunks = [self.rest]
        seen = self.rest.count(b"\n")
        try:
            while seen < count:
                data = sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError(f"{conn.host}:{conn.port} closed the connection")
                chunks.append(data)
                seen += data.count(b"\n")
        except TimeoutError as exc:
            raise redis.TimeoutError(f"timed out reading replies from {conn.host}:{conn.port}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"error reading from {conn.host}:{conn.port}: {exc}") from exc
        lines = b"".join(chunks).split(b"\r\n", count)
        if len(lines) != count + 1:
            raise redis.ConnectionError(f"unexpected reply from {conn.host}:{conn.port}: {lines[-1][-200:]!r}")
        self.rest = lines.pop()
        return lines


class Ticket:
    """Commands submitted and not yet collected: which node connection carries which of them."""

    def __init__(self, generation: int, size: int, routes: list[tuple[_Held, list[int]]]) -> None:
        self.generation = generation
        self.size = size
        self.routes = routes


class LinePipeline:
    """Runs commands whose replies are single lines; returns one reply line per command, in order.

    ``submit`` sends, ``collect`` reads, in submit order, so a caller can keep one chunk in flight
    while it prepares the next. Error replies come back as lines starting with ``-``; the caller
    decides what to retry. A connection failure raises redis-py's ConnectionError/TimeoutError and
    drops every held connection: tickets submitted before it can no longer be collected. One thread
    at a time.
    """

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster) -> None:
        self.client = client
        self._held: dict[str, _Held] = {}
        self._open = 0
        self._generation = 0

    def _connection(self, name: str, pool: Any) -> _Held:
        held = self._held.get(name)
        if held is None:
            held = self._held[name] = _Held(pool)
        return held

    def submit(self, pieces: Iterable[Sequence[Command]], sent: list[Command]) -> Ticket:
        """Send each piece as soon as it is produced, so the server works while the next is packed.

        Every command is appended to ``sent`` before it goes out: after a failure, ``sent`` holds
        what may have reached the server and the caller still holds the rest of ``pieces``.
        """
        routes: dict[str, tuple[_Held, list[int]]] = {}
        try:
            if isinstance(self.client, redis.cluster.RedisCluster):
                cluster: Any = self.client
                manager = cluster.nodes_manager
                for piece in pieces:
                    payloads: dict[str, list[bytes]] = {}
                    for command in piece:
                        node = manager.get_node_from_slot(cluster.keyslot(command[0]))
                        route = routes.get(node.name)
                        if route is None:
                            pool = cluster.get_redis_connection(node).connection_pool
                            route = routes[node.name] = (self._connection(node.name, pool), [])
                            payloads[node.name] = []
                        route[1].append(len(sent))
                        sent.append(command)
                        payloads.setdefault(node.name, []).append(command[1])
                    for name, data in payloads.items():
                        routes[name][0].add(b"".join(data))
            else:
                held = self._connection("", self.client.connection_pool)
                route = routes[""] = (held, [])
                for piece in pieces:
                    start = len(sent)
                    sent.extend(piece)
                    route[1].extend(range(start, len(sent)))
                    held.add(b"".join([payload for _, payload in piece]))
            # Every node's share goes out before any reply is read, so the nodes work in parallel.
            for held, _ in routes.values():
                held.flush()
        except BaseException:
            self.reset()
            raise
        self._open += 1
        return Ticket(self._generation, len(sent), list(routes.values()))

    def collect(self, ticket: Ticket) -> list[bytes]:
        if ticket.generation != self._generation:
            raise redis.ConnectionError("the connection these commands were sent on was reset")
        replies: list[bytes] = [b""] * ticket.size
        try:
            for held, indexes in ticket.routes:
                for i, line in zip(indexes, held.read(len(indexes)), strict=True):
                    replies[i] = line
        except BaseException:
            self.reset()
            raise
        self._open -= 1
        if self._open == 0:
            self._release(disconnect=False)
        return replies

    def run(self, commands: Sequence[Command]) -> list[bytes]:
        return self.collect(self.submit([commands], []))

    def reset(self) -> None:
        """Drop every held connection (their replies are unknown) and forget outstanding tickets."""
        self._release(disconnect=True)

    def _release(self, disconnect: bool) -> None:
        held, self._held = self._held, {}
        if disconnect:
            self._generation += 1
            self._open = 0
        for h in held.values():
            if disconnect or h.rest:  # bytes nobody asked for: the stream is out of step
                h.conn.disconnect()
            h.pool.release(h.conn)

    def refresh(self) -> None:
        """Re-read the slot map after MOVED/ASK or a failed node (no-op on a single server)."""
        if isinstance(self.client, redis.cluster.RedisCluster):
            self.client.nodes_manager.initialize()
