"""Bulk commands for loads and gc: hand-packed RESP, non-transactional pipelines, replies read in bulk.

redis-py's pipeline costs several microseconds of Python per command on each side (packing, then one
parser call per reply); a load sends hundreds of thousands of commands. Here each command is packed
with one ``%`` format (:mod:`..writes`), packed pieces go out as soon as they are ready (256 KB per
``sendall``), and as every command used (HSET, EXPIREAT, UNLINK, HLEN) answers with one line, the replies
are counted by their line ends in the raw bytes instead of being parsed one by one. In Cluster mode
commands are grouped by the node that owns their slot and every node's pipeline is in flight at the same
time.

The pipeline keeps its own sockets (:func:`.sockets.open_socket`: keepalive, TLS, AUTH, SELECT), one per
server or cluster primary, and reads the slot map with ``CLUSTER SLOTS`` on a separate short connection,
so it never borrows a redis-py connection or touches redis-py's internals.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

import hiredis

from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.protocol import Address, key_slot, parse_slots, reply_error
from precompute.adapters.redis.wire.sockets import open_socket, request, socket_error
from precompute.store import StoreError, StoreUnavailable

#: One command: (the key that routes it, its packed RESP bytes).
Command = tuple[bytes, bytes]

#: Bytes per sendall: large enough to amortize the call, small enough that the server starts
#: working on the first chunk while the next is still being packed.
_SEND_BYTES = 256 * 1024


class _Node:
    """One socket to one server, with the reply bytes read past the last collect."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
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
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise socket_error(self.where, exc) from exc

    def read(self, count: int) -> list[bytes]:
        # Counting b"\n" cannot miss a line end split across two reads; a reply line holds no CR or LF.
        chunks = [self.rest]
        seen = self.rest.count(b"\n")
        try:
            while seen < count:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise StoreUnavailable(f"{self.where} closed the connection")
                chunks.append(data)
                seen += data.count(b"\n")
        except OSError as exc:
            raise socket_error(self.where, exc) from exc
        lines = b"".join(chunks).split(b"\r\n", count)
        if len(lines) != count + 1:
            raise StoreUnavailable(f"{self.where} sent an unexpected reply: {lines[-1][-200:]!r}")
        self.rest = lines.pop()
        return lines

    def close(self) -> None:
        self.sock.close()


class Ticket:
    """Commands submitted and not yet collected: which node connection carries which of them."""

    def __init__(self, generation: int, size: int, routes: list[tuple[_Node, list[int]]]) -> None:
        self.generation = generation
        self.size = size
        self.routes = routes


class LinePipeline:
    """Runs commands whose replies are single lines; returns one reply line per command, in order.

    ``submit`` sends, ``collect`` reads, in submit order, so a caller can keep one chunk in flight
    while it prepares the next. Error replies come back as lines starting with ``-``; the caller
    decides what to retry. A connection failure raises :class:`StoreUnavailable` and closes every
    connection: tickets submitted before it can no longer be collected. One thread at a time.
    """

    def __init__(self, options: RedisOptions, where: str) -> None:
        self.options = options
        self.where = where
        self._nodes: dict[Address, _Node] = {}
        self._slots: list[Address | None] | None = None
        self._known: dict[Address, None] = {}  # every primary of every slot map read, to ask next time
        self._open = 0
        self._generation = 0

    def _node(self, address: Address) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            where = self.where if not self.options.cluster else f"{self.where} (node {address[0]}:{address[1]})"
            node = self._nodes[address] = _Node(open_socket(self.options, address, where), where)
        return node

    def submit(self, pieces: Iterable[Sequence[Command]], sent: list[Command]) -> Ticket:
        """Send each piece as soon as it is produced, so the server works while the next is packed.

        Every command of a piece is appended to ``sent`` before any of it goes out: after a failure,
        ``sent`` holds what may have reached the server and the caller still holds the rest of ``pieces``.
        """
        routes: dict[Address, tuple[_Node, list[int]]] = {}
        try:
            if self.options.cluster:
                slots = self._slot_map()
                for piece in pieces:
                    start = len(sent)
                    sent.extend(piece)
                    payloads: dict[Address, list[bytes]] = {}
                    for offset, (key, payload) in enumerate(piece):
                        address = slots[key_slot(key)]
                        if address is None:
                            raise StoreUnavailable(f"{self.where}: no node serves the slot of {key[:100]!r}")
                        route = routes.get(address)
                        if route is None:
                            route = routes[address] = (self._node(address), [])
                        route[1].append(start + offset)
                        payloads.setdefault(address, []).append(payload)
                    for address, data in payloads.items():
                        routes[address][0].add(b"".join(data))
            else:
                address = (self.options.host, self.options.port)
                route = routes[address] = (self._node(address), [])
                for piece in pieces:
                    start = len(sent)
                    sent.extend(piece)
                    route[1].extend(range(start, len(sent)))
                    route[0].add(b"".join([payload for _, payload in piece]))
            # Every node's share goes out before any reply is read, so the nodes work in parallel.
            for node, _ in routes.values():
                node.flush()
        except BaseException:
            self.reset()
            raise
        self._open += 1
        return Ticket(self._generation, len(sent), list(routes.values()))

    def collect(self, ticket: Ticket) -> list[bytes]:
        if ticket.generation != self._generation:
            raise StoreUnavailable(f"{self.where}: the connection these commands were sent on was reset")
        replies: list[bytes] = [b""] * ticket.size
        try:
            for node, indexes in ticket.routes:
                for i, line in zip(indexes, node.read(len(indexes)), strict=True):
                    replies[i] = line
        except BaseException:
            self.reset()
            raise
        self._open -= 1
        if self._open == 0:  # bytes nobody asked for: that stream is out of step
            for address, node in list(self._nodes.items()):
                if node.rest:
                    node.close()
                    del self._nodes[address]
        return replies

    def run(self, commands: Sequence[Command]) -> list[bytes]:
        return self.collect(self.submit([commands], []))

    def reset(self) -> None:
        """Close every connection (their replies are unknown) and forget outstanding tickets."""
        nodes, self._nodes = self._nodes, {}
        self._generation += 1
        self._open = 0
        for node in nodes.values():
            node.close()

    def refresh(self) -> None:
        """Forget the slot map after MOVED/ASK or a failed node (it is read again before the next submit)."""
        self._slots = None

    def close(self) -> None:
        self.reset()

    # -- the slot map (Cluster mode) ------------------------------------------------------------------

    def _slot_map(self) -> list[Address | None]:
        if self._slots is None:
            self._slots = self._read_slots()
        return self._slots

    def _read_slots(self) -> list[Address | None]:
        # A short connection of its own: the node connections may have replies in flight.
        seed = (self.options.host, self.options.port)
        failure: StoreError | None = None
        for address in dict.fromkeys([seed, *self._known]):
            try:
                sock = open_socket(self.options, address, self.where)
                try:
                    (reply,) = request(sock, [("CLUSTER", "SLOTS")], self.where)
                finally:
                    sock.close()
            except StoreUnavailable as exc:
                failure = exc
                continue
            except OSError as exc:
                failure = socket_error(self.where, exc)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise reply_error(self.where, str(reply))
            assert isinstance(reply, list)
            slots = parse_slots(reply, address[0])
            self._known.update(dict.fromkeys(a for a in slots if a is not None))
            return slots
        raise StoreUnavailable(f"{self.where}: no node answered CLUSTER SLOTS ({failure})")
