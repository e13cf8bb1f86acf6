"""The ``precompute`` command line: run | refresh | serve | versions | diff | publish | rollback | gc | get |
misses | schema.

Exit codes, for schedulers (cron, Airflow, Kubernetes CronJobs):

    0  success
    1  unexpected error (a bug: please report it with the traceback)
    2  bad configuration or usage: fix the config, do not retry
    3  model missing or incompatible with the request space: do not retry
    4  another run holds the store's run lock: retry later
    5  store or Ray cluster unreachable, or a write still failing after retries: retry later
    6  verification failed, or the drift gate refused the new version: nothing was published (a refused
       version is kept for review: `precompute publish VERSION`)
    7  `get`: not found (the key is outside the space or not in the live version, or nothing is published)
    8  the store is full (out of memory or quota): free room or grow it, then run again
    130/143  interrupted (SIGINT/SIGTERM): the new version was dropped, nothing served changed

``refresh`` uses the same codes (2: a grid space, a bad source; 3: the model; 5: the store or the stream
unreachable). It exits 0 when the source is consumed, bad records included (they are counted and reported),
and with ``--follow`` on SIGTERM once the batch in hand is written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from precompute import drift
from precompute.cluster import ClusterUnavailable
from precompute.config import Config, ConfigError, load_config, worker_count
from precompute.drift import DEFAULT_SAMPLE, DriftError
from precompute.model import ModelError
from precompute.served import Served, load_served, serve_file_schema
from precompute.settings import document_schema
from precompute.space import GridSpace, SpaceError
from precompute.store import (
    LockHeld,
    RunLock,
    State,
    StoreConfigError,
    StoreError,
    StoreFull,
    VersionError,
    VersionRecord,
    Versions,
)

if TYPE_CHECKING:
    from precompute.run import RunSummary  # the batch side is imported when a command needs it

log = logging.getLogger("precompute")


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    CONFIG = 2
    MODEL = 3
    LOCKED = 4
    STORE = 5
    VERIFY = 6
    NOT_FOUND = 7
    FULL = 8
    SIGINT = 130
    SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "schema":  # describes the file, so it needs none
        return _schema(args.serve_file)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    handler: Callable[[argparse.Namespace, Any], int] = args.handler
    try:
        if args.command == "serve":  # one model, or several (precompute/served.py)
            return handler(args, load_served(args.config or [], args.serve_file))
        return handler(args, load_config(args.config))
    except BaseException as exc:
        failure = _failure(exc)
        if failure is None:
            raise  # a bug: exit 1 with the traceback
        return _fail(*failure)


#: What each error means to a scheduler, first match wins: (error, exit code, how its message starts).
FAILURES: tuple[tuple[type[BaseException], Exit, str], ...] = (
    (ConfigError, Exit.CONFIG, "configuration error: "),
    (DriftError, Exit.CONFIG, ""),
    (StoreConfigError, Exit.CONFIG, ""),
    (ModelError, Exit.MODEL, "model error: "),
    (LockHeld, Exit.LOCKED, "refused: "),
    (ClusterUnavailable, Exit.STORE, "Ray cluster unavailable: "),
    (VersionError, Exit.CONFIG, ""),
    (StoreFull, Exit.FULL, "store full: "),
    (StoreError, Exit.STORE, "store error: "),
    (KeyboardInterrupt, Exit.SIGINT, "interrupted"),
    (Terminated, Exit.SIGTERM, "terminated"),
)


def _failure(exc: BaseException) -> tuple[Exit, str] | None:
    """The exit code and message for ``exc``, or None for an error no table entry explains (a bug)."""
    for kind, code, prefix in FAILURES:
        if isinstance(exc, kind):
            return code, prefix + str(exc)
    from precompute.run import DriftRefused, VerificationFailed  # the batch side, imported only when a run failed

    if isinstance(exc, VerificationFailed):
        return Exit.VERIFY, f"verification failed, nothing was published: {exc}"
    if isinstance(exc, DriftRefused):
        return Exit.VERIFY, f"the drift gate refused the new version, nothing was published: {exc}"
    return None


def _fail(code: Exit, message: str) -> int:
    print(f"precompute: {message}", file=sys.stderr)
    return int(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precompute", description="Precompute a model's predictions over a request space and serve them."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    def command(name: str, handler: Callable[[argparse.Namespace, Any], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if name == "serve":  # several models at once: --config repeated, or a serve file that lists them
            given = p.add_mutually_exclusive_group(required=True)
            given.add_argument(
                "--config",
                "-c",
                action="append",
                type=Path,
                help="the TOML configuration file; repeat it to serve several models (/models/<name>/predict)",
            )
            given.add_argument(
                "--serve-file",
                type=Path,
                help="a TOML file listing the job configs to serve (models = [...]) and the process's [serve] settings",
            )
        else:
            p.add_argument("--config", "-c", required=True, type=Path, help="the TOML configuration file")
        p.add_argument("--quiet", "-q", action="store_true", help="print warnings and errors only")
        p.add_argument("--verbose", "-v", action="store_true", help="also print Ray's and TensorFlow's own logs")
        p.set_defaults(handler=handler)
        return p

    p = command("run", _run, "score the whole request space into a new version and publish it")
    p.add_argument(
        "--summary-json", type=Path, help="also write the run summary to this file as JSON (also when it fails)"
    )
    p.add_argument(
        "--report", type=Path, metavar="FILE.html", help="also write the run report, one HTML page (also when it fails)"
    )
    p.add_argument(
        "--force", action="store_true", help="publish even if the drift gate ([verify] limits) would refuse, this once"
    )
    p = command("refresh", _refresh, "re-score changed entities of a table space into the live version")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SOURCE",
        help="a .jsonl, .csv or .parquet file, - (JSON lines on standard input), or a Redis Stream: "
        "redis://host:port/db?stream=NAME&group=GROUP (options consumer=, dead=)",
    )
    p.add_argument("--follow", action="store_true", help="keep reading the stream until SIGTERM")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port while refreshing")
    p.add_argument("--metrics-host", default="127.0.0.1", help="the metrics server's address (default 127.0.0.1)")
    p = command("serve", _serve, "serve lookups over HTTP")
    p.add_argument("--host", help="bind address (default: [serve] host)")
    p.add_argument("--port", type=int, help="port (default: [serve] port)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=argparse.SUPPRESS,  # absent unless given: "auto" is None too
        help='worker processes on the port, or "auto" (one per core this process may use; default: [serve] workers)',
    )
    p = command("versions", _versions, "list the store's versions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("diff", _diff, "compare a sample of keys of two versions, output by output")
    p.add_argument("version_a", metavar="VERSION_A", help="the version compared against (see `precompute versions`)")
    p.add_argument("version_b", metavar="VERSION_B", help="the version compared")
    p.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help=f"grid keys to compare (default {DEFAULT_SAMPLE:,}, at most the space), besides the samples the two "
        "versions' records keep (a table space's only ones)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("publish", _publish, "publish a version the drift gate refused, after review")
    p.add_argument("version", metavar="VERSION", help="the refused version (see `precompute versions`)")
    p = command("rollback", _rollback, "serve the previous published version again")
    p.add_argument("--to", help="a specific version to serve (see `precompute versions`)")
    p = command("gc", _gc, "drop old, failed and unfinished versions")
    p.add_argument("--keep", type=int, help="published versions to keep, the live one included (default: [store])")
    p = command("get", _get, "look one key up in the live version")
    p.add_argument("key", help="a key, e.g. True:25:Single(1):39")
    p = command(
        "misses", _misses, "list the off-grid keys the API recorded ([serve] record_misses), most answered first"
    )
    p.add_argument("--top", type=int, default=20, help="how many to list (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output: every recorded miss")
    p.add_argument("--clear", action="store_true", help="forget every recorded miss (under the run lock)")
    about = "print the JSON Schema of the configuration file, for editors (no --config needed)"
    p = sub.add_parser("schema", help=about, description=about)
    p.add_argument("--serve-file", action="store_true", help="the schema of a serve file (serve --serve-file) instead")
    return parser


def _workers(value: str) -> int | None:
    """``--workers``: a positive number, or "auto" (None, as ``[serve] workers = "auto"`` reads)."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'{value!r} is neither a positive number nor "auto". Fix: --workers 2')
    return int(value)


def _schema(serve_file: bool = False) -> int:
    print(json.dumps(serve_file_schema() if serve_file else document_schema(), indent=2))
    return Exit.OK


def _run(args: argparse.Namespace, config: Config) -> int:
    from precompute.run import RunSummary, run

    summary = RunSummary()
    try:
        run(config, verbose=args.verbose, force=args.force, summary=summary)
    except BaseException as exc:
        failure = _failure(exc)
        summary.error = failure[1] if failure else summary.error  # the message the user sees
        if summary.outcome == "refused":
            print(summary.render())  # the figures behind the refusal
        raise
    finally:
        _write_outputs(args, summary)
    print(summary.render())
    return Exit.OK


def _write_outputs(args: argparse.Namespace, summary: RunSummary) -> None:
    """The summary JSON and the HTML report, whatever the run's outcome; a file that cannot be written is
    said, and does not hide the run's own result."""
    from precompute import report

    data = summary.to_dict()
    files = [(args.summary_json, json.dumps(data, indent=2) + "\n")]
    if args.report:
        files.append((args.report, report.render(data)))
    for path, text in files:
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            log.error("could not write %s: %s", path, exc.strerror or exc)
            continue
        log.info("wrote %s", path)


def _refresh(args: argparse.Namespace, config: Config) -> int:
    import threading

    from precompute.refresh import Hooks, RefreshMetrics, RefreshSummary, refresh

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:  # finish the batch in hand, then stop
        stopped_by.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    metrics = RefreshMetrics()
    server = None
    if args.metrics_port is not None:
        busy = _cannot_listen(args.metrics_host, args.metrics_port)
        if busy:
            return _fail(
                Exit.CONFIG, f"--metrics-port: cannot listen on {args.metrics_host}:{args.metrics_port} ({busy})"
            )
        server = metrics.serve(args.metrics_port, args.metrics_host)

    def progress(summary: RefreshSummary, source: object) -> None:
        lag = summary.lag(0.5)
        log.info(
            "[refresh] %s records, %s written (%.0f/s), %s bad%s",
            f"{summary.records:,}",
            f"{summary.written:,}",
            summary.records / max(time.monotonic() - began, 1e-9),
            f"{summary.bad:,}",
            f", lag p50 {lag:.3f}s" if lag is not None else "",
        )

    began = time.monotonic()
    summary = RefreshSummary()
    try:
        refresh(
            config,
            args.source,
            follow=args.follow,
            stop=stop,
            metrics=metrics,
            hooks=Hooks(progress=progress),
            summary=summary,
        )
    finally:
        if server is not None:
            server.shutdown()
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.render())
    if stopped_by and not args.follow:
        return _fail(Exit.SIGTERM, "terminated before the end of the source; the batches written are kept")
    return Exit.OK


def _serve(args: argparse.Namespace, served: Served) -> int:
    """Process settings (host, port, workers...) come from ``served.serve``: the serve file's, or the first
    config's (precompute/served.py)."""
    settings = served.serve
    host, port = args.host or settings.host, args.port or settings.port
    busy = _cannot_listen(host, port)
    if busy:
        return _fail(
            Exit.CONFIG,
            f"cannot listen on {host}:{port} ({busy}). Fix: stop what uses it, or pick "
            "another port with --port or [serve] port",
        )
    workers = worker_count(vars(args).get("workers", settings.workers))
    if any(config.serve.fallback != "off" for config in served.models):
        from precompute.model import tensorflow

        # A ModelError (exit 3) in one line now, not a traceback from the app's start-up. With several workers
        # only whether it is installed: imported here, TensorFlow would sit in the supervisor's memory unused.
        if workers == 1 or importlib.util.find_spec("tensorflow") is None:
            tensorflow()
    if workers > 1:
        from precompute.api.workers import supervise

        supervise(served, host, port, workers)  # SIGTERM drains every worker, then returns: a normal stop
        return Exit.OK
    from precompute.api.server import serve

    with contextlib.suppress(Terminated):  # uvicorn has finished the requests in flight: a normal stop
        serve(served, host=args.host, port=args.port)
    return Exit.OK


def _cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, not an address here), or None when it can."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _open(config: Config) -> Versions:
    from precompute.adapters import open_backend

    return Versions(open_backend(config.store_url))


def _versions(args: argparse.Namespace, config: Config) -> int:
    views = _open(config).views()
    if args.json:
        rows = []
        for view in views:
            row = json.loads(view.record.to_bytes())
            keys = row["meta"].pop("sample_keys", None)  # long, and only for comparisons
            if keys is not None:
                row["meta"]["sample_keys_kept"] = len(keys)
            rows.append({**row, "live": view.live})
        print(json.dumps(rows, indent=2))
        return Exit.OK
    if not views:
        print(f"no versions in {config.store_url} yet: run `precompute run --config {args.config}`")
        return Exit.OK
    print(
        f"{'VERSION':<22} {'STATE':<12} {'ROWS':>12}  {'CREATED (UTC)':<20} {'DRIFT (vs the live before it)':<34} MODEL"
    )
    for view in reversed(views):
        r = view.record
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))
        state = "live" if view.live else r.state.value
        count = f"{r.rows:,}" if r.rows is not None else "-"
        print(
            f"{r.version:<22} {state:<12} {count:>12}  {created:<20} {_drift_brief(r):<34} {r.meta.get('model', '-')}"
        )
    return Exit.OK


def _drift_brief(record: VersionRecord) -> str:
    """A version's drift against the version live before it, as its record keeps it."""
    brief = record.meta.get("drift")
    if not isinstance(brief, dict) or brief.get("psi") is None:
        return "-"
    return f"PSI {brief['psi']:.3f}, {brief['changed_fraction']:.1%} changed"


def _diff(args: argparse.Namespace, config: Config) -> int:
    versions = _open(config)
    kept: list[list[str]] = []
    for version in (args.version_a, args.version_b):
        record = versions.get(version)  # an unknown version: VersionError, exit 2 as for `rollback --to`
        record.check_readable()
        if record.state is State.FAILED:
            return _fail(Exit.CONFIG, f"version {version} failed and its rows were dropped; nothing to compare")
        kept.append(record.meta.get("sample_keys", []))
    space = config.space
    keys = drift.sample_keys(space, args.sample) if isinstance(space, GridSpace) else []
    if not isinstance(space, GridSpace) and not any(kept):
        raise DriftError(
            "neither version's record keeps a key sample (an earlier release did not keep one), and a table "
            "space's keys are in its files, which only `precompute run` reads"
        )
    size = space.size if isinstance(space, GridSpace) else 0
    diff = drift.compare(versions.backend, args.version_a, args.version_b, drift.merge(keys, *kept), space_size=size)
    print(json.dumps(diff.to_dict(), indent=2) if args.json else diff.render())
    return Exit.OK


def _publish(args: argparse.Namespace, config: Config) -> int:
    versions = _open(config)
    with RunLock(versions.backend, ttl_s=config.store.lock_ttl_seconds):
        record, previous = versions.approve(args.version)
        dropped = versions.gc(config.store.keep_versions)
    back = f"; `precompute rollback` serves {previous} again" if previous else ""
    print(f"published {record.version} (previous: {previous or 'none'}){back}")
    if dropped:
        print(f"dropped {len(dropped)} old version(s): {', '.join(dropped)}")
    return Exit.OK


def _rollback(args: argparse.Namespace, config: Config) -> int:
    versions = _open(config)
    with RunLock(versions.backend, ttl_s=config.store.lock_ttl_seconds):
        old, new = versions.rollback(to=args.to)
    print(f"rolled back: {new} is live again (was {old}; it will not be re-promoted unless named with --to)")
    return Exit.OK


def _gc(args: argparse.Namespace, config: Config) -> int:
    versions = _open(config)
    with RunLock(versions.backend, ttl_s=config.store.lock_ttl_seconds):
        dropped = versions.gc(args.keep or config.store.keep_versions)
    print(f"dropped {len(dropped)} version(s){': ' + ', '.join(dropped) if dropped else ''}")
    return Exit.OK


def _get(args: argparse.Namespace, config: Config) -> int:
    from precompute.adapters import open_reader
    from precompute.store.codec import encode_key

    key = args.key
    if isinstance(config.space, GridSpace):
        try:
            # Off the grid too, the API's canonical form: a version may hold it (recorded misses, write-back).
            key = config.space.decode(key).key
        except SpaceError as exc:  # malformed: a usage error (HTTP 400); outside the space: not found (404)
            return _fail(Exit.CONFIG if exc.malformed else Exit.NOT_FOUND, str(exc))

    async def lookup() -> tuple[str | None, bytes | None]:
        reader = open_reader(config.store_url)
        try:
            version = await reader.get_alias()
            if version is None:
                return None, None
            record = (await reader.records()).get(version)
            if record is not None:
                VersionRecord.from_bytes(record).check_readable()  # a newer format: say so, exit 2
            return version, await reader.get(version, encode_key(key))
        finally:
            await reader.aclose()

    version, value = asyncio.run(lookup())
    if version is None:
        return _fail(Exit.NOT_FOUND, f"nothing is published in {config.store_url} yet: run `precompute run` first")
    if value is None:
        return _fail(Exit.NOT_FOUND, f"key {key!r} is not in version {version}")
    print(f'{{"key":{json.dumps(key)},"prediction":{value.decode()},"model_version":"{version}"}}')
    return Exit.OK


def _misses(args: argparse.Namespace, config: Config) -> int:
    backend = _open(config).backend
    if args.clear:
        with RunLock(backend, ttl_s=config.store.lock_ttl_seconds):  # not while a run reads them
            recorded = backend.misses()
            backend.clear_misses(list(recorded))
        print(f"cleared {len(recorded):,} recorded miss(es)")
        return Exit.OK
    ranked = sorted(backend.misses().items(), key=lambda item: (-item[1], item[0]))
    if args.json:
        print(json.dumps([{"key": key.decode(errors="replace"), "count": count} for key, count in ranked], indent=2))
        return Exit.OK
    if not ranked:
        print(f"no misses recorded in {config.store_url} (they are recorded with [serve] record_misses = true)")
        return Exit.OK
    print(
        f"{len(ranked):,} recorded miss(es), answered {sum(count for _, count in ranked):,} times; the most answered:"
    )
    for key, count in ranked[: max(0, args.top)]:
        print(f"{count:>10,}  {key.decode(errors='replace')}")
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
