"""What the contract suite cannot see of ``dynamodb://``: the layout, DynamoDB's hard request limits,
partial failures (through the fault-injecting proxy of tests/servers/dynamodb.py), capacity options and
URL handling. The store contract itself runs in tests/store/test_contract.py, once directly against
DynamoDB Local and once through the proxy with faults on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.config
import botocore.exceptions
import pytest

from precompute.adapters import open_backend, open_reader
from precompute.adapters.dynamodb import DynamoDBBackend, DynamoDBReader
from precompute.adapters.dynamodb.options import MAX_ITEM_BYTES, parse_settings
from precompute.adapters.dynamodb.writes import RateLimiter
from precompute.store import ItemTooLarge, StoreError, StoreUnavailable, StoreURL, WriteError
from precompute.store.codec import MAX_KEY_BYTES, encode_key, encode_value
from tests.servers.dynamodb import FaultProxy, local_client, store_url


def rows(n: int, prefix: str = "k") -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"True:{i % 40}:{prefix}:{i}"), encode_value({"weight_pounds": i / 8})) for i in range(n)]


def scan_table(endpoint: str, table: str) -> dict[bytes, bytes]:
    """Everything in a table, read with a plain boto3 client straight from the server (no adapter, no proxy)."""
    client = local_client(endpoint)
    found: dict[bytes, bytes] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            found[bytes(item["k"]["B"])] = bytes(item["v"]["B"])
    return found


def tables(endpoint: str, prefix: str) -> set[str]:
    names: set[str] = set()
    for page in local_client(endpoint).get_paginator("list_tables").paginate():
        names.update(n for n in page["TableNames"] if n.startswith(prefix + "."))
    return names


@pytest.fixture
def proxied(dynamodb_proxy: FaultProxy, dynamodb_prefix: str) -> Iterator[DynamoDBBackend]:
    """A backend that talks to DynamoDB Local through the proxy (faults off until a test turns them on)."""
    backend = open_backend(store_url(dynamodb_prefix, dynamodb_proxy.endpoint, deadline=30))
    assert isinstance(backend, DynamoDBBackend)
    yield backend
    backend.close()


# -- URL and settings (no server) -----------------------------------------------------------------


def test_url_selects_a_case_sensitive_prefix_and_its_options() -> None:
    settings = parse_settings(
        StoreURL.parse(
            "dynamodb://Babyweight-Prod?region=eu-west-1&billing=provisioned&read_capacity=50&write_capacity=200"
            "&write_rate=1500&write_threads=4&deadline=30&consistent_reads=true"
        )
    )
    assert settings.prefix == "Babyweight-Prod"
    assert settings.meta_table == "Babyweight-Prod.meta"
    assert settings.version_table("20240501-120000-ab12") == "Babyweight-Prod.v.20240501-120000-ab12"
    assert (settings.region, settings.endpoint, settings.placeholder_credentials) == ("eu-west-1", None, False)
    assert (settings.provisioned, settings.read_capacity, settings.write_capacity) == (True, 50, 200)
    assert (settings.write_rate, settings.write_threads, settings.deadline_s) == (1500.0, 4, 30.0)
    assert settings.consistent_reads


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("dynamodb://AKIAEXAMPLE:s3cr3t@prefix?region=eu-west-1", "credentials never go into"),
        ("dynamodb://prefix?regoin=eu-west-1", "unknown option(s) regoin"),
        ("dynamodb://prefix?credentials=AKIAEXAMPLE", "secrets never go into URLs"),
        ("dynamodb://prefix?credentials=placeholder", "only for a local endpoint"),
        ("dynamodb://prefix?billing=provisioned&read_capacity=5", "needs read_capacity= and write_capacity="),
        ("dynamodb://prefix?write_capacity=5", "billing=provisioned only"),
        ("dynamodb://prefix?write_rate=fast", "must be a number"),
        ("dynamodb://prefix?write_threads=0", "must be positive"),
        ("dynamodb://bad/prefix", "expected dynamodb://TABLE_PREFIX"),
        ("dynamodb://prefix:8000", "expected dynamodb://TABLE_PREFIX"),
        ("dynamodb://a*b", "the table prefix must be"),
        ("dynamodb://prod.babyweight", "the table prefix must be"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, complaint: str) -> None:
    with pytest.raises(StoreError) as caught:
        parse_settings(StoreURL.parse(url))
    assert complaint in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_version_ids_that_cannot_name_a_table_are_refused() -> None:
    settings = parse_settings(StoreURL.parse("dynamodb://prefix?region=eu-west-1"))
    for bad in ("", "a.b", "a/b", "x" * 65):
        with pytest.raises(StoreError, match="invalid version id"):
            settings.version_table(bad)


def test_a_missing_region_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    # A unique endpoint, so no client cached by an earlier test answers instead.
    url = f"dynamodb://prefix?endpoint=http://127.0.0.1:9/{uuid.uuid4().hex}&credentials=placeholder"
    with pytest.raises(StoreError, match="needs an AWS region"):
        open_backend(url)


def test_rate_limiter_holds_the_rate_across_threads() -> None:
    limiter = RateLimiter(1000)
    started = time.monotonic()

    def take() -> None:
        for _ in range(10):
            limiter.acquire(25)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: take(), range(4)))
    # 1 000 items at 1 000/s after a burst of 25: at least 0.975 s, however the threads interleave.
    assert time.monotonic() - started >= 0.95


# -- layout ---------------------------------------------------------------------------------------


@pytest.mark.server
def test_each_version_is_one_table_and_dropping_it_is_one_request(
    proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy, dynamodb_prefix: str, dynamodb_local: str
) -> None:
    proxied.put_record("a", b"{}")
    proxied.create_version("a")
    proxied.create_version("a")  # idempotent
    proxied.write("a", rows(600))
    assert tables(dynamodb_local, dynamodb_prefix) == {
        f"{dynamodb_prefix}.meta",
        f"{dynamodb_prefix}.v.a",
    }
    dynamodb_proxy.faults.seen.clear()
    proxied.drop_version("a")
    seen = dynamodb_proxy.faults.seen
    assert seen["DeleteTable"] == 1
    assert seen["BatchWriteItem"] == seen["Scan"] == seen["DeleteItem"] == 0
    assert tables(dynamodb_local, dynamodb_prefix) == {f"{dynamodb_prefix}.meta"}


@pytest.mark.server
def test_the_largest_item_fits_exactly_and_larger_ones_never_leave_the_process(
    proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    proxied.create_version("v")
    longest_key = encode_key("k" * MAX_KEY_BYTES)
    largest = (longest_key, b"x" * proxied.max_value_bytes)
    proxied.write("v", [largest])  # 400 KiB to the byte, accepted by the real server
    assert proxied.read("v", [longest_key]) == [largest[1]]

    dynamodb_proxy.faults.seen.clear()
    with pytest.raises(ItemTooLarge, match="'huge'") as caught:
        proxied.write("v", [*rows(3), (b"huge", b"x" * (proxied.max_value_bytes + 1))])
    assert caught.value.failed_keys == [b"huge"]
    # A key past the codec's limit makes the item too large even though its value is within limits.
    with pytest.raises(ItemTooLarge, match="b'longkkk"):
        proxied.write_batch("v", [(b"long" + b"k" * 2000, b"x" * proxied.max_value_bytes)])
    assert dynamodb_proxy.faults.seen["BatchWriteItem"] == 0
    assert proxied.read("v", [k for k, _ in rows(3)]) == [None, None, None]


@pytest.mark.server
def test_dynamodb_local_enforces_the_limits_we_respect(dynamodb_local: str, dynamodb_prefix: str) -> None:
    """The server is a faithful stand-in: a request past AWS's limits is refused, not quietly served."""
    client = local_client(dynamodb_local)
    table = f"{dynamodb_prefix}.limits"
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "B"}],
        BillingMode="PAY_PER_REQUEST",
    )
    puts = [{"PutRequest": {"Item": {"k": {"B": k}, "v": {"B": v}}}} for k, v in rows(26)]
    with pytest.raises(botocore.exceptions.ClientError, match="Too many items"):
        client.batch_write_item(RequestItems={table: puts})
    keys = [{"k": {"B": k}} for k, _ in rows(101)]
    with pytest.raises(botocore.exceptions.ClientError, match="Too many items"):
        client.batch_get_item(RequestItems={table: {"Keys": keys}})
    over = MAX_ITEM_BYTES - len("k") - len("key") - len("v") + 1
    with pytest.raises(botocore.exceptions.ClientError, match="Item size has exceeded"):
        client.put_item(TableName=table, Item={"k": {"B": b"key"}, "v": {"B": b"x" * over}})
    client.put_item(TableName=table, Item={"k": {"B": b"key"}, "v": {"B": b"x" * (over - 1)}})


@pytest.mark.server
def test_requests_stay_within_25_puts_and_100_keys(proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy) -> None:
    data = rows(1234)
    proxied.create_version("v")
    proxied.write("v", data)
    keys = [k for k, _ in data]
    assert proxied.read("v", keys) == [v for _, v in data]

    async def lookups() -> list[bytes | None]:
        reader = open_reader(proxied.url)
        try:
            return await reader.get_many("v", keys)
        finally:
            await reader.aclose()

    assert asyncio.run(lookups()) == [v for _, v in data]
    assert dynamodb_proxy.faults.largest["BatchWriteItem"] == 25
    assert dynamodb_proxy.faults.largest["BatchGetItem"] == 100
    assert dynamodb_proxy.faults.seen["bad_signature"] == 0


@pytest.mark.server
def test_two_items_with_one_key_in_a_call_are_not_refused(proxied: DynamoDBBackend) -> None:
    proxied.create_version("v")
    key = encode_key("dup")
    proxied.write("v", [(key, b'{"y":1}'), *rows(30), (key, b'{"y":2}')])
    assert proxied.read("v", [key, key]) in ([b'{"y":1}'] * 2, [b'{"y":2}'] * 2)


# -- partial failures -----------------------------------------------------------------------------


@pytest.mark.server
def test_every_item_lands_despite_unprocessed_items_and_throttling(
    proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy, dynamodb_prefix: str, dynamodb_local: str
) -> None:
    data = rows(2000)
    proxied.create_version("v")
    dynamodb_proxy.faults.unprocessed = 0.3
    dynamodb_proxy.faults.throttle = 0.2
    proxied.write("v", data)
    seen = dynamodb_proxy.faults.seen
    assert seen["unprocessed_items"] > 100
    assert seen["throttled"] > 5
    stored = scan_table(dynamodb_local, f"{dynamodb_prefix}.v.v")
    assert stored == dict(data)


@pytest.mark.server
def test_every_key_is_read_despite_unprocessed_keys_and_throttling(
    proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    data = rows(1500)
    proxied.create_version("v")
    proxied.write("v", data)
    keys = [k for k, _ in data] + [b"absent"]
    expected = [v for _, v in data] + [None]
    dynamodb_proxy.faults.unprocessed = 0.3
    dynamodb_proxy.faults.throttle = 0.2

    assert proxied.read("v", keys) == expected
    backend_faults = dynamodb_proxy.faults.seen["unprocessed_keys"]

    async def lookups() -> tuple[list[bytes | None], list[bytes | None]]:
        reader = open_reader(proxied.url)
        try:
            many = await reader.get_many("v", keys)
            singles = [await reader.get("v", k) for k in keys[:200]]
            return many, singles
        finally:
            await reader.aclose()

    many, singles = asyncio.run(lookups())
    assert many == expected
    assert singles == expected[:200]
    assert backend_faults > 100
    assert dynamodb_proxy.faults.seen["unprocessed_keys"] > backend_faults + 100
    assert dynamodb_proxy.faults.seen["throttled"] > 20


@pytest.mark.server
@pytest.mark.parametrize("fault", ["throttle", "unprocessed"])
def test_a_write_that_never_gets_through_is_raised_with_its_keys(
    dynamodb_proxy: FaultProxy, dynamodb_prefix: str, fault: str
) -> None:
    backend = open_backend(store_url(dynamodb_prefix, dynamodb_proxy.endpoint, deadline=1))
    try:
        backend.create_version("v")
        data = rows(60)
        setattr(dynamodb_proxy.faults, fault, 1.0)
        dynamodb_proxy.faults.ops = frozenset({"BatchWriteItem"})
        started = time.monotonic()
        with pytest.raises(WriteError, match="60 of 60 items did not land") as caught:
            backend.write("v", data)
        assert time.monotonic() - started < 30
        assert set(caught.value.failed_keys) == {k for k, _ in data}
    finally:
        backend.close()


@pytest.mark.server
def test_a_throttled_lookup_is_an_error_not_a_miss(proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy) -> None:
    proxied.create_version("v")
    proxied.write("v", rows(5))
    key = rows(1)[0][0]

    async def lookup() -> None:
        reader = open_reader(proxied.url)
        try:
            assert await reader.get("v", key) is not None
            dynamodb_proxy.faults.throttle = 1.0
            with pytest.raises(StoreUnavailable, match="ProvisionedThroughputExceeded"):
                await reader.get("v", key)
            with pytest.raises(StoreUnavailable):
                await reader.get_many("v", [key])
        finally:
            await reader.aclose()

    asyncio.run(lookup())


@pytest.mark.server
def test_the_proxy_rejects_a_request_signed_with_the_wrong_secret(dynamodb_proxy: FaultProxy) -> None:
    """The signature check that every other test passes can fail (DynamoDB Local never checks)."""
    import boto3

    client = boto3.session.Session(
        aws_access_key_id="precomputelocal", aws_secret_access_key="wrong", region_name="us-east-1"
    ).client(
        "dynamodb", endpoint_url=dynamodb_proxy.endpoint, config=botocore.config.Config(retries={"max_attempts": 0})
    )
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidSignature"):
        client.list_tables()
    assert dynamodb_proxy.faults.seen["bad_signature"] == 1


# -- writers in parallel, capacity ----------------------------------------------------------------


def _write_part(url: str, part: int, n: int) -> None:
    backend = open_backend(url)
    try:
        backend.write("v", rows(n, prefix=f"p{part}"))
    finally:
        backend.close()


@pytest.mark.server
def test_writers_in_several_processes_all_land(dynamodb_store_url: str, dynamodb_local: str) -> None:
    backend = open_backend(dynamodb_store_url)
    backend.create_version("v")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_part, args=(dynamodb_store_url, part, 800)) for part in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    expected = {k: v for part in range(3) for k, v in rows(800, prefix=f"p{part}")}
    assert isinstance(backend, DynamoDBBackend)
    assert scan_table(dynamodb_local, backend.settings.version_table("v")) == expected
    backend.close()


@pytest.mark.server
def test_provisioned_billing_gives_each_version_table_its_own_units(dynamodb_local: str, dynamodb_prefix: str) -> None:
    url = store_url(dynamodb_prefix, dynamodb_local, billing="provisioned", read_capacity=7, write_capacity=9)
    backend = open_backend(url)
    try:
        backend.create_version("v")
        backend.write("v", rows(50))
        assert backend.read("v", [rows(1)[0][0]]) == [rows(1)[0][1]]
        backend.put_record("v", b"{}")
        client = local_client(dynamodb_local)
        table = client.describe_table(TableName=f"{dynamodb_prefix}.v.v")["Table"]
        assert table["ProvisionedThroughput"]["ReadCapacityUnits"] == 7
        assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == 9
        # The meta table stays on demand: every API process polls the alias from it.
        meta = client.describe_table(TableName=f"{dynamodb_prefix}.meta")["Table"]
        assert meta["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    finally:
        backend.close()


@pytest.mark.server
def test_on_demand_is_the_default(dynamodb_store_url: str, dynamodb_local: str, dynamodb_prefix: str) -> None:
    backend = open_backend(dynamodb_store_url)
    backend.create_version("v")
    table = local_client(dynamodb_local).describe_table(TableName=f"{dynamodb_prefix}.v.v")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    backend.close()


@pytest.mark.server
def test_write_rate_caps_a_load(dynamodb_local: str, dynamodb_prefix: str) -> None:
    backend = open_backend(store_url(dynamodb_prefix, dynamodb_local, write_rate=400))
    try:
        backend.create_version("v")
        data = rows(1000)
        started = time.monotonic()
        backend.write("v", data)
        # 1 000 items at 400/s after a burst of one request: at least 2.44 s.
        assert time.monotonic() - started >= 2.4
        assert backend.read("v", [k for k, _ in data]) == [v for _, v in data]
    finally:
        backend.close()


# -- clients and readers --------------------------------------------------------------------------


@pytest.mark.server
def test_one_client_per_process_is_shared_by_backends_and_readers(dynamodb_store_url: str) -> None:
    first, second = open_backend(dynamodb_store_url), open_backend(dynamodb_store_url)
    assert isinstance(first, DynamoDBBackend)
    assert isinstance(second, DynamoDBBackend)
    assert first.client is second.client
    first.close()
    # Closing one backend leaves the shared client usable by the other.
    second.create_version("v")
    second.write("v", rows(3))
    assert second.read("v", [rows(1)[0][0]]) == [rows(1)[0][1]]
    second.close()


@pytest.mark.server
def test_reader_before_the_first_publish_and_across_event_loops(dynamodb_store_url: str) -> None:
    reader = open_reader(dynamodb_store_url)
    assert isinstance(reader, DynamoDBReader)
    assert asyncio.run(reader.get_alias()) is None  # not even the meta table exists yet
    assert asyncio.run(reader.get("v", b"k")) is None
    backend = open_backend(dynamodb_store_url)
    backend.create_version("v")
    backend.write("v", rows(3))
    assert backend.swap_alias(None, "v")
    # A second asyncio.run is a second event loop: the reader makes a new connection pool for it.
    assert asyncio.run(reader.get_alias()) == "v"
    assert asyncio.run(reader.get("v", rows(1)[0][0])) == rows(1)[0][1]
    asyncio.run(reader.aclose())
    backend.close()


@pytest.mark.server
@pytest.mark.parametrize("consistent", [False, True])
def test_lookups_are_eventually_consistent_unless_asked(
    dynamodb_proxy: FaultProxy, dynamodb_prefix: str, consistent: bool
) -> None:
    url = store_url(dynamodb_prefix, dynamodb_proxy.endpoint, consistent_reads=str(consistent).lower())
    backend = open_backend(url)
    backend.create_version("v")
    backend.write("v", rows(3))
    assert backend.swap_alias(None, "v")
    dynamodb_proxy.faults.seen.clear()

    async def lookups() -> None:
        reader = open_reader(url)
        try:
            assert await reader.get_alias() == "v"
            assert await reader.get("v", rows(1)[0][0]) == rows(1)[0][1]
            assert await reader.get_many("v", [k for k, _ in rows(3)]) == [v for _, v in rows(3)]
        finally:
            await reader.aclose()

    asyncio.run(lookups())
    seen = dynamodb_proxy.faults.seen
    # The alias is always read strongly consistent; the data only when the URL asks.
    assert seen["GetItem"] == 2
    assert seen["GetItem:consistent"] == (2 if consistent else 1)
    assert seen["BatchGetItem:consistent"] == (1 if consistent else 0)
    backend.close()
