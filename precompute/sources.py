"""Where ``precompute refresh`` reads changed entities from: a file, standard input, or a Redis Stream.

Every source yields :class:`Entry` objects: one record's fields (or why it could not be read at all), its
position for reports (``line 12``, ``row 3``, a stream id) and its offset for the watermark (the record's
index in a file, the stream id). A stream entry also carries its arrival time, read from its id (the
milliseconds Redis stamped it with), so that the refresh can measure the lag from arrival to answer.

* Files: ``.jsonl`` (one JSON object a line, read line by line so that a malformed line is one bad record),
  ``.csv`` and ``.parquet`` (read with pyarrow, as ``precompute run`` reads a table: the same column types;
  the key column of a CSV is read as text). ``-`` is JSON lines on standard input, read by a thread so that
  a batch's window is kept while standard input is quiet.
* ``redis://host:port/db?stream=NAME&group=GROUP`` (``rediss://`` for TLS; options ``consumer=``,
  ``dead=``): a consumer group, created at the recorded watermark or at ``0`` (the stream's whole history)
  when missing, with MKSTREAM. This consumer's pending entries (read but never acknowledged: a crash) are
  read again first, then new ones with ``XREADGROUP ... BLOCK``. The caller acknowledges an entry with
  :meth:`RedisStream.ack` only once its answer is written, so delivery is at least once.

A stream entry's fields are text: a numeric input is parsed from it. A file's values keep their types.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from precompute.config import ConfigError

FILE_FORMATS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
STREAM_OPTIONS = ("stream", "group", "consumer", "dead")


@dataclass(frozen=True)
class Entry:
    """One record as read: ``fields`` is None when it could not be parsed at all (``error`` says why)."""

    position: str  # for reports: "line 12", "row 3", "1700000000000-0"
    offset: int | str  # for the watermark: the record's index in a file, or the stream id
    fields: dict[str, Any] | None
    error: str | None = None
    arrived: float | None = None  # unix time the stream stamped it with, None for a file
    text: bool = False  # every value is text (a stream entry): numbers are parsed from it


class Source(Protocol):
    """What the refresh loop reads from."""

    @property
    def name(self) -> str:
        """Identifies the source in the watermark: the same file (path, size, mtime), or stream and group."""
        ...

    #: True once a file has been read to its end (a stream never is).
    exhausted: bool

    def read(self, count: int, timeout_s: float) -> list[Entry]:
        """Up to ``count`` entries, waiting up to ``timeout_s`` for the first; [] on timeout or at the end."""
        ...

    def ack(self, entries: Sequence[Entry]) -> None:
        """The entries' answers are written everywhere: a stream acknowledges them."""
        ...

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """A bad record: a stream moves it to its dead-letter stream (and acknowledges it)."""
        ...

    def pending(self) -> int | None:
        """Entries delivered to the consumer group and not acknowledged (None for a file)."""
        ...

    def close(self) -> None: ...


def is_stream(spec: str) -> bool:
    return spec.startswith(("redis://", "rediss://", "unix://"))


def source_name(spec: str) -> str:
    """The name a source's watermark is kept under (see :attr:`Source.name`), without opening it."""
    if spec == "-":
        return "stdin"
    if is_stream(spec):
        base, _, query = spec.partition("?")
        options = {name: values[-1] for name, values in parse_qs(query).items()}
        return f"stream:{_redacted(base)}#{options.get('stream')}/{options.get('group')}"
    path = Path(spec)
    return file_identity(path) if path.is_file() else f"file:{path}"


def open_source(
    spec: str,
    *,
    start: int | str | None = None,
    consumer: str = "",
    block_ms: int = 1000,
    key_column: str | None = None,
) -> Source:
    """The source named on the command line. ``start`` is the recorded watermark of this source (a file
    offset to skip to, or the id a new consumer group starts after); a CSV's ``key_column`` is read as text.
    Raises ConfigError for a bad one."""
    if spec == "-":
        return Lines(sys.stdin, "stdin")
    if is_stream(spec):
        at = start if isinstance(start, str) else None
        return RedisStream.from_url(spec, start=at, consumer=consumer, block_ms=block_ms)
    if "://" in spec:
        raise ConfigError(
            f"--from {spec!r}: only files, - (standard input) and redis:// streams are read. "
            "Fix: e.g. --from changes.jsonl or --from 'redis://host:6379/0?stream=changes&group=refresh'"
        )
    path = Path(spec)
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"--from {spec!r}: cannot tell the format from its suffix. Fix: use .jsonl, .csv or .parquet")
    if not path.is_file():
        raise ConfigError(f"--from {spec!r}: no such file. Fix: give the path of a .jsonl, .csv or .parquet file")
    skip = start if isinstance(start, int) else 0
    if kind == "json":
        return Lines(path.open("r", encoding="utf-8", errors="replace"), file_identity(path), skip=skip, owned=True)
    return Table(path, kind, file_identity(path), skip=skip, key_column=key_column)


def file_identity(path: Path) -> str:
    """A file's name in the watermark: the same path, size and modification time is the same file."""
    stat = path.stat()
    return f"file:{path.resolve()}@{stat.st_size}:{stat.st_mtime_ns}"


class _FileSource:
    """What a file or standard input does not have: nothing to acknowledge, no dead-letter stream, no
    pending entries (a restart resumes from the recorded offset instead)."""

    def ack(self, entries: Sequence[Entry]) -> None:
        return None

    def dead_letter(self, entry: Entry, reason: str) -> None:
        return None

    def pending(self) -> int | None:
        return None


class Lines(_FileSource):
    """JSON lines from a file or standard input. A thread reads them into a queue, so that a quiet standard
    input does not hold a batch past its window."""

    def __init__(self, stream: IO[str], name: str, skip: int = 0, owned: bool = False) -> None:
        self.name = name
        self.exhausted = False
        self._stream = stream
        self._owned = owned
        self._skip = skip
        self._queue: queue.Queue[Entry | None] = queue.Queue(maxsize=65_536)
        self._thread = threading.Thread(target=self._feed, name="precompute-refresh-lines", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        for number, line in enumerate(self._stream, start=1):
            if number <= self._skip or not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                self._queue.put(Entry(f"line {number}", number, None, f"not JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(fields, dict):
                self._queue.put(Entry(f"line {number}", number, None, f"not a JSON object: {type(fields).__name__}"))
                continue
            self._queue.put(Entry(f"line {number}", number, fields))
        self._queue.put(None)

    def read(self, count: int, timeout_s: float) -> list[Entry]:
        if self.exhausted:
            return []
        entries: list[Entry] = []
        try:
            first = self._queue.get(timeout=max(timeout_s, 0.0)) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return entries
        for item in _drain(self._queue, first, count):
            if item is None:
                self.exhausted = True
                break
            entries.append(item)
        return entries

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def _drain(q: queue.Queue[Entry | None], first: Entry | None, count: int) -> Iterator[Entry | None]:
    yield first
    taken = 1
    while taken < count and first is not None:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        yield item
        taken += 1
        if item is None:
            return


class Table(_FileSource):
    """A CSV or Parquet file, read with pyarrow as ``precompute run`` reads a table (the same types), in
    slices of the batch size. Positions are the row numbers (1-based; a CSV's line is one more)."""

    def __init__(self, path: Path, kind: str, name: str, skip: int = 0, key_column: str | None = None) -> None:
        import pyarrow as pa
        import pyarrow.csv
        import pyarrow.parquet

        self.name = name
        self.exhausted = False
        self._kind = kind
        if kind == "csv":  # the key column as text: a key "007" stays "007"
            types = {key_column: pa.string()} if key_column else {}
            self._table = pyarrow.csv.read_csv(path, convert_options=pyarrow.csv.ConvertOptions(column_types=types))
        else:
            self._table = pyarrow.parquet.read_table(path)
        self._next = skip  # rows before it were written by an earlier refresh of this same file

    def read(self, count: int, timeout_s: float) -> list[Entry]:
        if self._next >= self._table.num_rows:
            self.exhausted = True
            return []
        rows = self._table.slice(self._next, count).to_pylist()
        first = self._next + 1
        self._next += len(rows)
        where = "line" if self._kind == "csv" else "row"
        shift = 1 if self._kind == "csv" else 0  # the header line
        entries = [Entry(f"{where} {first + i + shift}", first + i, row) for i, row in enumerate(rows)]
        if self._next >= self._table.num_rows:
            self.exhausted = True
        return entries

    def close(self) -> None:
        return None


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class RedisStream:
    """A Redis Stream read through a consumer group (see the module docstring)."""

    client: Any  # redis.Redis
    stream: str
    group: str
    consumer: str
    dead: str
    block_ms: int = 1000
    shown: str = ""  # the URL without its password, for logs
    exhausted: bool = False
    _backlog_done: bool = False  # this consumer's pending entries have been read again
    _pending_after: str = "0"  # the last pending entry read again (the next read starts after it)

    @property
    def name(self) -> str:
        return f"stream:{self.shown}#{self.stream}/{self.group}"

    @classmethod
    def from_url(cls, url: str, *, start: str | None = None, consumer: str = "", block_ms: int = 1000) -> RedisStream:
        import redis

        parts = urlsplit(url)
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = sorted(set(options) - set(STREAM_OPTIONS))
        if unknown:
            raise ConfigError(f"--from: unknown stream option(s) {unknown}; the options are {list(STREAM_OPTIONS)}")
        stream, group = options.get("stream"), options.get("group")
        if not stream or not group:
            raise ConfigError(
                "--from: a Redis Stream needs ?stream=NAME&group=GROUP. "
                "Fix: e.g. 'redis://host:6379/0?stream=changes&group=refresh'"
            )
        base = url.split("?", 1)[0]
        client = redis.Redis.from_url(base, socket_timeout=max(30.0, block_ms / 1000 + 10), socket_connect_timeout=5)
        shown = _redacted(base)
        name = options.get("consumer") or consumer or default_consumer()
        source = cls(client, stream, group, name, options.get("dead") or f"{stream}:dead", block_ms, shown)
        source._create_group(start)
        return source

    def _create_group(self, start: str | None) -> None:
        """The consumer group, made if missing: after the watermark, else at ``0`` (the whole history)."""
        import redis

        try:
            with self._unavailable():
                self.client.xgroup_create(self.stream, self.group, id=start or "0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """The stream's Redis not answering is StoreUnavailable (exit 5, retry later), as for the store."""
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            from precompute.store import StoreUnavailable

            raise StoreUnavailable(f"the stream's Redis at {self.shown} does not answer: {exc}") from None

    def read(self, count: int, timeout_s: float) -> list[Entry]:
        if not self._backlog_done:  # this consumer's entries left unacknowledged by a crash, first
            found = self._read(self._pending_after, count, None)
            if found:
                self._pending_after = str(found[-1].offset)
                return found
            self._backlog_done = True
        block = max(1, int(timeout_s * 1000)) if timeout_s > 0 else None
        return self._read(">", count, block)

    def _read(self, cursor: str, count: int, block: int | None) -> list[Entry]:
        with self._unavailable():
            answer = self.client.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block)
        entries: list[Entry] = []
        for _stream, items in answer or []:
            for raw_id, raw in items:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                arrived = int(entry_id.split("-", 1)[0]) / 1000
                if not raw:  # deleted from the stream (XDEL, MAXLEN) after delivery, before it was read again
                    entries.append(Entry(entry_id, entry_id, None, "deleted from the stream", arrived, True))
                    continue
                fields = {_text(k): _text(v) for k, v in raw.items()}
                entries.append(Entry(entry_id, entry_id, fields, None, arrived, True))
        return entries

    def ack(self, entries: Sequence[Entry]) -> None:
        ids = [str(entry.offset) for entry in entries]
        with self._unavailable():
            for start in range(0, len(ids), 10_000):
                self.client.xack(self.stream, self.group, *ids[start : start + 10_000])

    def dead_letter(self, entry: Entry, reason: str) -> None:
        fields = {"id": str(entry.offset), "reason": reason, "fields": json.dumps(entry.fields, default=str)}
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead, fields)
        pipe.xack(self.stream, self.group, str(entry.offset))
        with self._unavailable():
            pipe.execute()

    def pending(self) -> int | None:
        with self._unavailable():
            info = self.client.xpending(self.stream, self.group)
        return int(info["pending"])

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _redacted(base: str) -> str:
    """A Redis URL without its password."""
    parts = urlsplit(base)
    return base.replace(f":{parts.password}@", ":***@") if parts.password else base
