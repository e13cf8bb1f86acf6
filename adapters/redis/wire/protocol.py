"""RESP as the Redis adapter speaks it: packing, the connect handshake, cluster slots, and the error replies.

:data:`REPLIES` is the one table of Redis error replies the adapter translates. The API's connections
(:mod:`.connection`, :mod:`.cluster`), the bulk pipeline (:mod:`.lines`, :mod:`..writes`) and the redis-py
side (:mod:`..errors`, for the replies redis-py turns into its own exception classes) all read it, so a
reply means the same thing whichever code path meets it. A reply whose kind is
:class:`~precompute.store.errors.StoreUnavailable` is transient: a bulk write retries it within its
``retry`` window, a lookup answers 503.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from precompute.adapters.redis.options import RedisOptions
from precompute.store import StoreConfigError, StoreError, StoreFull, StoreUnavailable

Arg = bytes | str | int
Address = tuple[str, int]
#: Hash slots of a Redis Cluster.
SLOTS = 16_384


def pack(*args: Arg) -> bytes:
    """One command in RESP, packed by hiredis (C)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub types a 1-tuple
    return packed


def hello(o: RedisOptions) -> list[tuple[Arg, ...]]:
    """What a new connection sends first: AUTH (password, or ACL user and password), SELECT, CLIENT SETNAME."""
    commands: list[tuple[Arg, ...]] = []
    if o.password is not None:
        commands.append(("AUTH", o.username, o.password) if o.username else ("AUTH", o.password))
    if o.db:
        commands.append(("SELECT", o.db))
    commands.append(("CLIENT", "SETNAME", "precompute"))
    return commands


def key_slot(key: bytes) -> int:
    """The cluster slot of ``key``: CRC16 (XMODEM) of the key, or of its ``{hash tag}``, modulo 16,384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


def parse_slots(reply: Sequence[Any], default_host: str) -> list[Address | None]:
    """The owner (primary) of every slot, from a ``CLUSTER SLOTS`` reply; ``None`` for a slot nobody serves."""
    slots: list[Address | None] = [None] * SLOTS
    for start, end, primary, *_ in reply:
        # An empty host means "the address you reached me on" (a node that does not know its own IP).
        node = (primary[0].decode() or default_host, int(primary[1]))
        slots[start : end + 1] = [node] * (end + 1 - start)
    return slots


# -- error replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What a failure means to the store: the error class to raise, and the reason (with the fix, where the
    user can fix it), phrased to follow the server's name: "Redis at redis://h:6379/0 <reason> (<detail>)"."""

    kind: type[StoreError]
    reason: str

    def error(self, where: str, detail: str) -> StoreError:
        return self.kind(f"{where} {self.reason} ({detail})")

    @property
    def transient(self) -> bool:
        return issubclass(self.kind, StoreUnavailable)


_WRONG_PASSWORD = Failure(
    StoreConfigError,
    "refused the user name or password in the URL. Fix: redis://USER:PASSWORD@host for an ACL user, "
    "redis://:PASSWORD@host for the default user (Memorystore's AUTH string, an ElastiCache AUTH token)",
)
_NO_PASSWORD_SET = Failure(
    StoreConfigError, "has no password set, and the URL gives one. Fix: remove the password from the URL"
)

#: Redis error replies, by their first word (or, for a generic ``ERR``, the start of the message).
#: Matched at a word boundary: ``BUSY`` is not ``BUSYKEY``.
REPLIES: dict[str, Failure] = {
    # The server cannot serve right now; the same request works later.
    "LOADING": Failure(StoreUnavailable, "is loading its data set into memory (after a restart)"),
    "BUSY": Failure(StoreUnavailable, "is busy running a script or function"),
    "MASTERDOWN": Failure(StoreUnavailable, "is a replica that lost its link to the primary"),
    "CLUSTERDOWN": Failure(StoreUnavailable, "is a cluster with slots nobody serves (a node down, a failover)"),
    "TRYAGAIN": Failure(StoreUnavailable, "is moving this key's slot to another node (a resharding)"),
    "MOVED": Failure(StoreUnavailable, "moved this key's slot to another node (a resharding or a failover)"),
    "ASK": Failure(StoreUnavailable, "is migrating this key's slot to another node"),
    "READONLY": Failure(
        StoreUnavailable,
        "is a read-only replica: a failover is in progress, or the URL names a replica "
        "(point it at the primary endpoint)",
    ),
    "ERR max number of clients reached": Failure(StoreUnavailable, "has no room for another client (maxclients)"),
    # The URL does not fit the server: bad configuration, not an outage.
    "NOAUTH": Failure(
        StoreConfigError,
        "requires a password and the URL gives none. Fix: redis://:PASSWORD@host, or "
        "redis://USER:PASSWORD@host for an ACL user",
    ),
    "WRONGPASS": _WRONG_PASSWORD,
    "ERR invalid password": _WRONG_PASSWORD,  # Redis before 6
    "ERR AUTH <password> called without": _NO_PASSWORD_SET,  # ... any password configured for the default user
    "ERR Client sent AUTH, but no password is set": _NO_PASSWORD_SET,  # Redis before 6
    "NOPERM": Failure(
        StoreConfigError,
        "denies the URL's ACL user a command or key this store needs. Fix: grant it the keys of its prefix "
        "and the commands listed in docs/redis.md (Access)",
    ),
    "ERR This instance has cluster support disabled": Failure(
        StoreConfigError, "is not a Redis Cluster. Fix: redis:// (without +cluster or cluster=true)"
    ),
    "ERR DB index is out of range": Failure(
        StoreConfigError, "has fewer databases than the number in the URL's path. Fix: redis://host:port/0"
    ),
    # The request was refused.
    "OOM": Failure(
        StoreFull,
        "is full (maxmemory reached; nothing more can be stored). Fix: gc old versions, or raise maxmemory",
    ),
    "WRONGTYPE": Failure(
        StoreError,
        "holds a key of another type under this store's prefix: another program writes there. "
        "Fix: give this store its own prefix= option",
    ),
    "MISCONF": Failure(StoreError, "refuses writes: it cannot persist to disk (see the server's log)"),
}
_LONGEST_FIRST = sorted(REPLIES, key=len, reverse=True)


def reply_failure(text: str) -> Failure | None:
    """The entry of :data:`REPLIES` for an error reply (without its leading ``-``), or ``None``."""
    for prefix in _LONGEST_FIRST:
        if text.startswith(prefix) and text[len(prefix) : len(prefix) + 1] in ("", " "):
            return REPLIES[prefix]
    return None


def reply_error(where: str, text: str) -> StoreError:
    """The store error for an error reply (``str`` of hiredis's ``ReplyError``); ``where`` names the server."""
    failure = reply_failure(text)
    if failure is None:
        return StoreError(f"{where} answered with an error ({text})")
    return failure.error(where, text)
