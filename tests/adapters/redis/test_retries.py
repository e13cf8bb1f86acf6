"""The retry logic of bulk writes (adapters/redis/writes.py, BulkRunner) alone, on scripted replies.

What a real server does is in test_writes.py; here the order of replies on a connection and the replies
themselves are scripted, to pin down what is resent, what is reported and what is read by whom.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import pytest

from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.lines import Command, LinePipeline, Ticket
from precompute.adapters.redis.wire.protocol import pack
from precompute.adapters.redis.writes import BulkRunner
from precompute.store import StoreConfigError, StoreUnavailable, StoreURL, WriteError


class ScriptedPipe(LinePipeline):
    """Answers each run with the next scripted reply lines (the retry logic alone, no server)."""

    def __init__(self, script: list[list[bytes] | BaseException]) -> None:
        super().__init__(RedisOptions.parse(StoreURL.parse("redis://127.0.0.1:1")), "Redis at test")
        self.script = script
        self.sent: list[list[Command]] = []
        self.refreshed = 0

    def run(self, commands: Sequence[Command]) -> list[bytes]:
        self.sent.append(list(commands))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def refresh(self) -> None:
        self.refreshed += 1


class StreamPipe(LinePipeline):
    """One ordered stream of replies, as a real connection has: ``collect`` reads the oldest unread replies,
    whichever ticket asked. The server answers ``-LOADING`` the first time it sees a command in ``loading``."""

    def __init__(self, loading: set[bytes]) -> None:
        super().__init__(RedisOptions.parse(StoreURL.parse("redis://127.0.0.1:1")), "Redis at test")
        self.loading = set(loading)
        self.stream: list[bytes] = []
        self.applied: list[bytes] = []

    def submit(self, pieces: Iterable[Sequence[Command]], sent: list[Command]) -> Ticket:
        start = len(sent)
        for piece in pieces:
            sent.extend(piece)
        for key, _ in sent[start:]:
            if key in self.loading:
                self.loading.discard(key)
                self.stream.append(b"-LOADING Redis is loading the dataset in memory")
            else:
                self.applied.append(key)
                self.stream.append(b":1")
        return Ticket(0, len(sent) - start, [])

    def collect(self, ticket: Ticket) -> list[bytes]:
        lines, self.stream = self.stream[: ticket.size], self.stream[ticket.size :]
        return lines

    def refresh(self) -> None:
        pass


def test_a_retry_while_the_next_chunk_is_in_flight_reads_its_own_replies() -> None:
    chunks = [[(b"c%d-%d" % (c, i), pack(b"HSET", b"c%d-%d" % (c, i), b"k", b"v")) for i in range(4)] for c in range(3)]
    # The first chunk's first command and the second chunk's last one meet a server still loading.
    pipe = StreamPipe({b"c0-0", b"c1-3"})
    runner = BulkRunner(pipe, "Redis at test", 5.0)
    previous = None
    for chunk in chunks:
        current = runner.submit([chunk], "writing")
        if previous is not None:
            runner.settle(previous, following=current)
        previous = current
    assert previous is not None
    runner.settle(previous)
    assert sorted(pipe.applied) == sorted(key for chunk in chunks for key, _ in chunk), "every command applied"
    assert pipe.stream == [], "every reply read by the one who asked"


def test_bulk_runner_retries_moves_and_lost_connections_only_for_what_failed() -> None:
    commands = [(b"b%d" % i, pack(b"HSET", b"b%d" % i, b"k%d" % i, b"v")) for i in range(3)]
    pipe = ScriptedPipe([StoreUnavailable("reset"), [b":1", b"-MOVED 1 127.0.0.1:7001", b":1"], [b":1"]])
    runner = BulkRunner(pipe, "Redis at test", 5.0)
    assert runner.run(commands, "writing") == [b":1", b":1", b":1"]
    assert [len(sent) for sent in pipe.sent] == [3, 3, 1]
    assert pipe.sent[2] == [commands[1]]
    assert pipe.refreshed == 2


@pytest.mark.parametrize(
    "reply", [b"-LOADING Redis is loading", b"-TRYAGAIN Multiple keys", b"-CLUSTERDOWN down", b"-READONLY x"]
)
def test_bulk_runner_retries_every_reply_the_table_calls_transient(reply: bytes) -> None:
    command = (b"b", pack(b"HSET", b"b", b"k", b"v"))
    pipe = ScriptedPipe([[reply], [b":1"]])
    assert BulkRunner(pipe, "Redis at test", 5.0).run([command], "writing") == [b":1"]


def test_bulk_runner_reports_a_full_server_with_the_keys_that_did_not_land() -> None:
    commands = [(b"b%d" % i, pack(b"HSET", b"b%d" % i, b"k%d" % i, b"v", b"j%d" % i, b"w")) for i in range(3)]
    oom = b"-OOM command not allowed when used memory > 'maxmemory'."
    runner = BulkRunner(ScriptedPipe([[b":2", oom, oom]]), "Redis at test", 5.0)
    with pytest.raises(WriteError, match="maxmemory reached") as caught:
        runner.run(commands, "writing 6 rows of version v")
    assert caught.value.failed_keys == [b"k1", b"j1", b"k2", b"j2"]


def test_bulk_runner_reports_a_refused_permission_as_configuration() -> None:
    command = (b"b", pack(b"HSET", b"b", b"k", b"v"))
    denied = b"-NOPERM this user has no permissions to access one of the keys used as arguments"
    with pytest.raises(StoreConfigError, match="denies the URL's ACL user"):
        BulkRunner(ScriptedPipe([[denied]]), "Redis at test", 5.0).run([command], "writing")


def test_bulk_runner_gives_up_after_its_deadline_with_a_clear_message() -> None:
    pipe = ScriptedPipe([StoreUnavailable("refused")] * 1000)
    runner = BulkRunner(pipe, "Redis at redis://h:1", 0.3)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"writing 1 rows.*retry=.*refused.*incomplete"):
        runner.run([(b"b", pack(b"HSET", b"b", b"k", b"v"))], "writing 1 rows of version v")
    assert time.monotonic() - started < 2
