"""What the contract suite cannot see of ``dynamodb://``: the layout, the meta table's conditional writes
when an answer is lost, capacity options and the per-process client. The store contract itself runs in
tests/store/test_contract.py, once directly against DynamoDB Local and once through the fault-injecting
proxy of tests/servers/dynamodb.py. Beside this file: options (URLs), errors (translation, unreachable
stores), writes (request limits, partial failures) and reader (the API's side).
"""

from __future__ import annotations

import botocore.config
import botocore.exceptions
import pytest

from precompute.adapters import open_backend
from precompute.adapters.dynamodb import DynamoDBBackend
from precompute.store.codec import encode_key, encode_value
from tests.servers.dynamodb import FaultProxy, local_client, store_url, table_names


def rows(n: int) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"True:{i % 40}:k:{i}"), encode_value({"weight_pounds": i / 8})) for i in range(n)]


# -- layout ---------------------------------------------------------------------------------------


@pytest.mark.server
def test_each_version_is_one_table_and_dropping_it_is_one_request(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy, dynamodb_prefix: str, dynamodb_local: str
) -> None:
    backend = dynamodb_proxied
    backend.put_record("a", b"{}")
    backend.create_version("a")
    backend.create_version("a")  # idempotent
    backend.write("a", rows(600))
    assert table_names(local_client(dynamodb_local), dynamodb_prefix) == {
        f"{dynamodb_prefix}.meta",
        f"{dynamodb_prefix}.v.a",
    }
    dynamodb_proxy.faults.seen.clear()
    backend.drop_version("a")
    seen = dynamodb_proxy.faults.seen
    assert seen["DeleteTable"] == 1
    assert seen["BatchWriteItem"] == seen["Scan"] == seen["DeleteItem"] == 0
    assert table_names(local_client(dynamodb_local), dynamodb_prefix) == {f"{dynamodb_prefix}.meta"}


@pytest.mark.server
def test_provisioned_billing_gives_each_version_table_its_own_units(dynamodb_local: str, dynamodb_prefix: str) -> None:
    url = store_url(dynamodb_prefix, dynamodb_local, billing="provisioned", read_capacity=7, write_capacity=9)
    backend = open_backend(url)
    try:
        backend.create_version("v", expected_rows=50)
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


# -- meta table: conditional writes whose answer is lost ------------------------------------------


@pytest.mark.server
def test_an_alias_swap_whose_answer_was_lost_still_reports_success(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    """The swap lands, its answer is lost, the retry's condition fails on our own write: that is a success,
    not "somebody else moved the alias" (which would fail a publish that happened)."""
    backend = dynamodb_proxied
    backend.put_record("v0", b"{}")  # the meta table exists: the first PutItem is the swap itself
    dynamodb_proxy.faults.ops = frozenset({"PutItem", "UpdateItem"})
    dynamodb_proxy.faults.lose = 1
    assert backend.swap_alias(None, "v1")
    dynamodb_proxy.faults.lose = 1
    assert backend.swap_alias("v1", "v2")
    assert dynamodb_proxy.faults.seen["lost"] == 2
    assert backend.get_alias() == "v2"
    # Somebody else's swap is still refused, retried or not.
    assert not backend.swap_alias("v1", "v3")
    dynamodb_proxy.faults.lose = 1
    assert not backend.swap_alias(None, "v3")
    assert backend.get_alias() == "v2"


@pytest.mark.server
def test_a_lock_take_whose_answer_was_lost_is_held(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    backend = dynamodb_proxied
    backend.put_record("v0", b"{}")
    dynamodb_proxy.faults.ops = frozenset({"PutItem"})
    dynamodb_proxy.faults.lose = 1
    assert backend.acquire_lock("first", 30) is None  # the retry is its own owner's renewal
    assert dynamodb_proxy.faults.seen["lost"] == 1
    assert backend.acquire_lock("second", 30) == "first"


@pytest.mark.server
def test_records_are_read_across_query_pages(dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy) -> None:
    # A Query answers 1 MB at most: 40 records of 30 KB take two pages.
    expected = {f"v{i:02d}": b"{" + bytes([65 + i % 26]) * 30_000 + b"}" for i in range(40)}
    for version, record in expected.items():
        dynamodb_proxied.put_record(version, record)
    dynamodb_proxy.faults.seen.clear()
    assert dynamodb_proxied.records() == expected
    assert dynamodb_proxy.faults.seen["Query"] >= 2


# -- the client -----------------------------------------------------------------------------------


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
