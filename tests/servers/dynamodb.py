"""AWS's DynamoDB Local, started once per session, and a fault-injecting proxy in front of it.

The jar comes from ``make servers`` (scripts/fetch-dynamodb-local.sh) into var/dynamodb-local/, or from
``$DYNAMODB_LOCAL_DIR``. Store URLs carry ``credentials=placeholder`` and a region, so every process that
opens them (Ray workers included) needs nothing from the environment.

:class:`FaultProxy` forwards DynamoDB's JSON protocol to the server and, as configured by the test,
throttles requests (``ProvisionedThroughputExceededException``), hands part of a batch back as
``UnprocessedItems``/``UnprocessedKeys`` (the partial failures real DynamoDB produces under load), or
answers with any other error AWS sends (``AccessDeniedException``, ``InternalServerError``). It also
checks every request's SigV4 signature the way AWS does, which DynamoDB Local itself never does.

``DOWN_FIXTURES`` name stores whose endpoint cannot be reached: the contract suite checks that every call
on them fails as ``StoreUnavailable``, quickly.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import random
import socket
import subprocess
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.servers import ROOT, find_binary, free_port, missing, stop, wait_for_port

STORE_FIXTURES = ["dynamodb_store_url", "dynamodb_faulty_store_url"]
DOWN_FIXTURES = ["dynamodb_down_url"]
#: Options of a store that must give up fast: 1 s per HTTP request, 2 s of retries per call.
FAST_FAILURE = {"timeout": 1, "deadline": 2}
REGION = "us-east-1"
#: The secret behind ``credentials=placeholder`` (see adapters.dynamodb.client.PLACEHOLDER_KEY).
PLACEHOLDER_SECRET = "precomputelocal"
INSTALL_HINT = "run `make servers` (needs npm and Java 17)"


def local_dir() -> Path:
    return Path(os.environ.get("DYNAMODB_LOCAL_DIR") or ROOT / "var" / "dynamodb-local")


def store_url(prefix: str, endpoint: str, **options: object) -> str:
    query = "&".join(
        f"{name}={quote(str(value), safe=':/')}"
        for name, value in {"region": REGION, "endpoint": endpoint, "credentials": "placeholder", **options}.items()
    )
    return f"dynamodb://{prefix}?{query}"


def local_client(endpoint: str) -> Any:
    """A plain boto3 client on the server, for tests that look behind the adapter."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=PLACEHOLDER_SECRET, aws_secret_access_key=PLACEHOLDER_SECRET, region_name=REGION
    ).client("dynamodb", endpoint_url=endpoint)


def create_key_table(client: Any, table: str) -> None:
    """An on-demand table keyed by the binary attribute ``k``, made with a plain boto3 client."""
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "B"}],
        BillingMode="PAY_PER_REQUEST",
    )


def table_names(client: Any, prefix: str) -> set[str]:
    """The tables of the store with this prefix."""
    names: set[str] = set()
    for page in client.get_paginator("list_tables").paginate():
        names.update(n for n in page["TableNames"] if n.startswith(prefix + "."))
    return names


def scan_table(endpoint: str, table: str) -> dict[bytes, bytes]:
    """Everything in a version table, read with a plain boto3 client straight from the server."""
    found: dict[bytes, bytes] = {}
    for page in local_client(endpoint).get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            found[bytes(item["k"]["B"])] = bytes(item["v"]["B"])
    return found


def require_sdk() -> None:
    for package in ("boto3", "aiohttp"):
        if importlib.util.find_spec(package) is None:
            missing(package, "pip install -e '.[dynamodb]'")


def drop_tables(client: Any, prefix: str) -> None:
    names: list[str] = []
    for page in client.get_paginator("list_tables").paginate():
        names.extend(n for n in page["TableNames"] if n.startswith(prefix + "."))
    for name in names:
        client.delete_table(TableName=name)


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[str]:
    """The endpoint URL of a DynamoDB Local server on a free loopback port."""
    require_sdk()
    folder = local_dir()
    if not (folder / "DynamoDBLocal.jar").exists():
        missing("DynamoDB Local", INSTALL_HINT)
    java = find_binary("java", "install Java 17 (e.g. apt-get install openjdk-17-jre-headless)")
    port = free_port()
    proc = subprocess.Popen(
        [
            java,
            "-Xmx1g",
            "-Djava.library.path=DynamoDBLocal_lib",
            "-jar",
            "DynamoDBLocal.jar",
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(port),
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
def dynamodb_prefix(dynamodb_local: str) -> Iterator[str]:
    """A table prefix no other test uses; its tables are dropped afterwards to keep the server small."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    drop_tables(local_client(dynamodb_local), prefix)


@pytest.fixture
def dynamodb_store_url(dynamodb_local: str, dynamodb_prefix: str) -> str:
    return store_url(dynamodb_prefix, dynamodb_local)


@pytest.fixture
def dynamodb_down_url() -> str:
    """A store on a loopback port where nothing listens (connections are refused at once), with options
    that make every call give up within about 3 s: each must then raise ``StoreUnavailable``."""
    require_sdk()
    return store_url(f"down{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{free_port()}", **FAST_FAILURE)


@pytest.fixture
def dynamodb_silent_url() -> Iterator[str]:
    """A store on a port that takes connections and never answers: every request ends in a timeout."""
    require_sdk()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)  # never accepted: the kernel completes the handshakes, nobody reads
        port = listener.getsockname()[1]
        yield store_url(f"silent{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{port}", **FAST_FAILURE)


# -- fault injection ------------------------------------------------------------------------------


@dataclass
class Faults:
    """What the proxy does to the requests it forwards; tests change it between steps."""

    #: Probability that a request of one of ``ops`` is refused with a throttling error.
    throttle: float = 0.0
    #: Probability that each item or key of a batch request is handed back unprocessed.
    unprocessed: float = 0.0
    #: (HTTP status, error code) every request of one of ``ops`` is answered with instead of being forwarded.
    error: tuple[int, str] | None = None
    #: How many requests of ``ops`` the server carries out and whose answer is then lost (the connection
    #: closes before the reply): the client cannot tell whether they landed.
    lose: int = 0
    ops: frozenset[str] = frozenset({"BatchWriteItem", "BatchGetItem", "GetItem"})
    seen: Counter[str] = field(default_factory=Counter)
    largest: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=lambda: random.Random(20240501))
    mutex: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, n: int = 1) -> None:
        with self.mutex:
            self.seen[what] += n

    def take_loss(self) -> bool:
        with self.mutex:
            if self.lose <= 0:
                return False
            self.lose -= 1
            return True

    def roll(self, probability: float) -> bool:
        with self.mutex:
            return probability > 0 and self.rng.random() < probability


class FaultProxy:
    """A threaded HTTP proxy for DynamoDB's JSON protocol (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.faults = Faults()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the AWS endpoint

            def do_POST(self) -> None:
                proxy.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._local = threading.local()
        self._thread = threading.Thread(target=self.server.serve_forever, name="dynamodb-fault-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", "0")))
        headers = {name: value for name, value in request.headers.items()}
        operation = headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        faults = self.faults
        faults.count(operation)
        # "Boto3/1.x ..." from boto3, "Python/3.x aiohttp/..." from the API's reader.
        faults.count(f"{operation}@{headers.get('User-Agent', '?').split('/', 1)[0]}")
        if not verify_signature(request.command, request.path, headers, body, PLACEHOLDER_SECRET):
            faults.count("bad_signature")
            return self._reply(request, 400, _error("InvalidSignatureException", "signature does not match"))
        if operation in faults.ops and faults.error is not None:
            faults.count("failed")
            return self._reply(request, faults.error[0], _error(faults.error[1], "injected failure"))
        if operation in faults.ops and faults.roll(faults.throttle):
            faults.count("throttled")
            return self._reply(request, 400, _error("ProvisionedThroughputExceededException", "injected throttling"))
        payload = json.loads(body) if body else {}
        specs = payload.get("RequestItems", {}).values() if operation == "BatchGetItem" else [payload]
        if any(isinstance(spec, dict) and spec.get("ConsistentRead") for spec in specs):
            faults.count(f"{operation}:consistent")
        withheld: dict[str, Any] = {}
        if operation == "BatchWriteItem":
            payload, withheld = self._withhold_writes(payload)
        elif operation == "BatchGetItem":
            payload, withheld = self._withhold_reads(payload)
        if withheld and not payload["RequestItems"]:
            status, answer = 200, {}
        else:
            forwarded = json.dumps(payload).encode() if withheld else body
            status, raw = self._forward(request.command, request.path, headers, forwarded)
            if operation in faults.ops and faults.take_loss():
                faults.count("lost")
                request.close_connection = True  # done upstream, and no answer
                return None
            if not withheld:
                return self._reply(request, status, raw)
            answer = json.loads(raw)
        if status == 200:
            answer.setdefault("UnprocessedItems" if operation == "BatchWriteItem" else "UnprocessedKeys", {})
            answer["UnprocessedItems" if operation == "BatchWriteItem" else "UnprocessedKeys"].update(withheld)
        self._reply(request, status, json.dumps(answer).encode())

    def _withhold_writes(self, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        kept: dict[str, list[Any]] = {}
        withheld: dict[str, list[Any]] = {}
        for table, requests in payload.get("RequestItems", {}).items():
            self._note_size("BatchWriteItem", len(requests))
            for item in requests:
                (withheld if self.faults.roll(self.faults.unprocessed) else kept).setdefault(table, []).append(item)
        self.faults.count("unprocessed_items", sum(len(v) for v in withheld.values()))
        return {**payload, "RequestItems": kept}, withheld

    def _withhold_reads(self, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        kept: dict[str, Any] = {}
        withheld: dict[str, Any] = {}
        for table, spec in payload.get("RequestItems", {}).items():
            self._note_size("BatchGetItem", len(spec["Keys"]))
            for key in spec["Keys"]:
                target = withheld if self.faults.roll(self.faults.unprocessed) else kept
                target.setdefault(table, {**spec, "Keys": []})["Keys"].append(key)
        self.faults.count("unprocessed_keys", sum(len(v["Keys"]) for v in withheld.values()))
        return {**payload, "RequestItems": kept}, withheld

    def _note_size(self, operation: str, size: int) -> None:
        with self.faults.mutex:
            self.faults.largest[operation] = max(self.faults.largest[operation], size)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        send = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "host", "connection")}
        for attempt in (1, 2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.upstream, timeout=60)
            try:
                conn.request(method, path, body=body, headers=send)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/x-amz-json-1.0")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("x-amz-crc32", str(zlib.crc32(body)))
        request.end_headers()
        request.wfile.write(body)


def _error(code: str, message: str) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}).encode()


def verify_signature(method: str, path: str, headers: dict[str, str], body: bytes, secret: str) -> bool:
    """Recompute a request's SigV4 signature from what arrived, as AWS does, and compare."""
    # botocore is imported here, not at the top: this plugin loads in every test session, with or
    # without the dynamodb extra installed.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    try:
        auth = headers["Authorization"]
        credential = auth.split("Credential=", 1)[1].split(",", 1)[0]
        signed = auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        signature = auth.split("Signature=", 1)[1].strip()
        access_key, _date, region, service, _ = credential.split("/")
        lower = {k.lower(): v for k, v in headers.items()}
        request = AWSRequest(method, f"http://{lower['host']}{path}", data=body, headers={n: lower[n] for n in signed})
        request.context["timestamp"] = lower["x-amz-date"]
    except (KeyError, IndexError, ValueError):
        return False
    signer = SigV4Auth(Credentials(access_key, secret), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return bool(expected == signature)


@pytest.fixture(scope="session")
def dynamodb_proxy_server(dynamodb_local: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(dynamodb_local)
    yield proxy
    proxy.close()


@pytest.fixture
def dynamodb_proxy(dynamodb_proxy_server: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy with no faults configured and fresh counters."""
    dynamodb_proxy_server.faults = Faults()
    yield dynamodb_proxy_server
    dynamodb_proxy_server.faults = Faults()


@pytest.fixture
def dynamodb_proxied(dynamodb_proxy: FaultProxy, dynamodb_prefix: str) -> Iterator[Any]:
    """A ``DynamoDBBackend`` that talks to DynamoDB Local through the proxy (faults off until a test turns
    them on), with a 30 s deadline."""
    from precompute.adapters import open_backend

    backend = open_backend(store_url(dynamodb_prefix, dynamodb_proxy.endpoint, deadline=30))
    yield backend
    backend.close()


@pytest.fixture
def dynamodb_faulty_store_url(dynamodb_proxy: FaultProxy, dynamodb_prefix: str) -> str:
    """The contract suite again, with a tenth of the batch items and keys handed back unprocessed and one
    data request in twenty throttled: every answer must still be complete and exact."""
    dynamodb_proxy.faults.unprocessed = 0.1
    dynamodb_proxy.faults.throttle = 0.05
    return store_url(dynamodb_prefix, dynamodb_proxy.endpoint)
