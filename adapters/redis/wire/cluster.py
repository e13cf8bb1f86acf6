"""Lookups on a Redis Cluster: one pipelined connection (:mod:`.connection`) per primary, keys routed by slot.

The slot map comes from ``CLUSTER SLOTS`` on any node that answers (the URL's node first). A ``MOVED``
reply (a resharding, a failover) re-points that slot at once, re-reads the whole map in the background, and
the command is sent again where it belongs; an ``ASK`` reply (a slot being migrated) sends ``ASKING`` and the
command to the named node, once. A node that cannot be reached fails the lookups routed to it with
:class:`StoreUnavailable` and has the map re-read in the background; its connection reopens by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import hiredis

from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.connection import PipelinedConnection
from precompute.adapters.redis.wire.protocol import Address, Arg, key_slot, parse_slots, reply_error
from precompute.store import StoreError, StoreUnavailable

#: Redirections one command follows before it gives up (a slot moves at most once or twice in a row).
MAX_REDIRECTS = 5


def redirection(reply: Any) -> tuple[str, int, Address] | None:
    """("MOVED" | "ASK", slot, node) of a redirection reply, else None."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, node = rest.partition(" ")
    host, _, port = node.rpartition(":")
    return kind, int(slot), (host, int(port))


class ClusterConnections:
    def __init__(self, options: RedisOptions, where: str) -> None:
        self.options = options
        self.where = where
        self._nodes: dict[Address, PipelinedConnection] = {}
        self._slots: list[Address | None] | None = None
        self._reading: asyncio.Future[list[Address | None]] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def _node(self, address: Address) -> PipelinedConnection:
        node = self._nodes.get(address)
        if node is None:
            host, port = address
            options = dataclasses.replace(self.options, host=host, port=port)
            node = self._nodes[address] = PipelinedConnection(options, f"{self.where} (node {host}:{port})")
        return node

    # -- the slot map ---------------------------------------------------------------------------------

    async def _slot_map(self) -> list[Address | None]:
        if self._slots is not None:
            return self._slots
        # Concurrent callers wait for the same read of the map.
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_slots())
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._reading)

    async def _read_slots(self) -> list[Address | None]:
        seed = (self.options.host, self.options.port)
        known = {seed: None, **{a: None for a in self._slots or () if a is not None}}
        failure: StoreError | None = None
        for address in known:
            try:
                reply = await self._node(address).call("CLUSTER", "SLOTS")
            except StoreUnavailable as exc:
                failure = exc
                continue
            slots = self._slots = parse_slots(reply, address[0])
            return slots
        raise StoreUnavailable(f"{self.where}: no node answered CLUSTER SLOTS ({failure})")

    def _reread_later(self) -> None:
        """Re-read the map in the background; lookups go on with the one they have."""
        if self._reading is not None and not self._reading.done():
            return
        task = asyncio.ensure_future(self._read_slots())
        self._reading = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _address(self, slots: list[Address | None], key: bytes) -> Address:
        address = slots[key_slot(key)]
        if address is None:
            raise StoreUnavailable(f"{self.where}: no node serves the slot of key {key[:100]!r} (cluster down?)")
        return address

    # -- commands -------------------------------------------------------------------------------------

    async def call(self, key: bytes, command: tuple[Arg, ...]) -> Any:
        """The reply of ``command``, which touches ``key``; an error reply raises."""
        (reply,) = await self.call_many([key], [command])  # follows a redirection
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(self.where, str(reply))
        return reply

    async def call_many(self, keys: Sequence[bytes], commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """The replies of ``commands`` (``commands[i]`` touches ``keys[i]``): one pipeline per node, all in flight
        together. An error reply other than a redirection is returned in its place."""
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for _ in range(MAX_REDIRECTS):
            slots = await self._slot_map()
            groups: dict[Address, list[int]] = {}
            for i in pending:
                groups.setdefault(self._address(slots, keys[i]), []).append(i)
            try:
                if len(groups) == 1:  # a single lookup, or a batch on one node: no tasks to gather
                    ((node, group),) = groups.items()
                    answers = [await self._node(node).call_many([commands[i] for i in group])]
                else:
                    answers = await asyncio.gather(
                        *(self._node(node).call_many([commands[i] for i in group]) for node, group in groups.items())
                    )
            except StoreUnavailable:
                self._reread_later()  # a failover moves the slots of a lost node elsewhere
                raise
            pending = []
            for group, answer in zip(groups.values(), answers, strict=True):
                for i, reply in zip(group, answer, strict=True):
                    moved = redirection(reply)
                    if moved is None:
                        replies[i] = reply
                    elif moved[0] == "ASK":
                        replies[i] = await self._asking(moved[2], commands[i])
                    else:
                        slots[moved[1]] = moved[2]
                        pending.append(i)
            if not pending:
                return replies
            self._reread_later()
        raise StoreUnavailable(f"{self.where}: still redirected after {MAX_REDIRECTS} tries (slots moving?)")

    async def _asking(self, address: Address, command: tuple[Arg, ...]) -> Any:
        asking, reply = await self._node(address).call_many([("ASKING",), command])
        if isinstance(asking, hiredis.ReplyError) or redirection(reply) is not None:
            raise StoreUnavailable(f"{self.where}: slot migration to {address[0]}:{address[1]} is not settled")
        return reply

    async def aclose(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await task
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()
