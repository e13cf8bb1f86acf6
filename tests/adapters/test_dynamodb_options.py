"""``dynamodb://`` URLs: what they select, and every mistake refused as bad configuration naming the fix.

No server: these run without DynamoDB Local (but with the dynamodb extra installed).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from precompute.adapters import open_backend, open_reader
from precompute.adapters.dynamodb.layout import Layout
from precompute.adapters.dynamodb.options import parse_settings
from precompute.store import StoreConfigError, StoreURL, VersionError


def test_url_selects_a_case_sensitive_prefix_and_its_options() -> None:
    settings = parse_settings(
        StoreURL.parse(
            "dynamodb://Babyweight-Prod?region=eu-west-1&billing=provisioned&read_capacity=50&write_capacity=200"
            "&write_rate=1500&write_threads=4&deadline=30&consistent_reads=true&timeout=2.5"
        )
    )
    assert settings.prefix == "Babyweight-Prod"
    layout = Layout(settings.prefix)
    assert layout.meta_table == "Babyweight-Prod.meta"
    assert layout.version_table("20240501-120000-ab12") == "Babyweight-Prod.v.20240501-120000-ab12"
    assert (settings.region, settings.endpoint, settings.placeholder_credentials) == ("eu-west-1", None, False)
    assert (settings.provisioned, settings.read_capacity, settings.write_capacity) == (True, 50, 200)
    assert (settings.write_rate, settings.write_threads, settings.deadline_s) == (1500.0, 4, 30.0)
    assert settings.consistent_reads
    assert settings.timeout_s == 2.5


def test_defaults() -> None:
    settings = parse_settings(StoreURL.parse("dynamodb://p?region=eu-west-1&deadline=&timeout="))
    assert (settings.provisioned, settings.write_rate, settings.write_threads) == (False, None, 8)
    assert (settings.deadline_s, settings.timeout_s, settings.consistent_reads) == (120.0, 10.0, False)
    # A metadata call retries 10 s of the deadline at most, an API lookup 3 s: somebody is waiting.
    assert settings.call_backoff.deadline_s == 10.0
    assert settings.lookup_backoff.deadline_s == 3.0
    assert settings.bulk_backoff.deadline_s == 120.0


def test_the_deadline_bounds_every_retry() -> None:
    settings = parse_settings(StoreURL.parse("dynamodb://p?region=eu-west-1&deadline=2&timeout=1"))
    assert settings.bulk_backoff.deadline_s == settings.call_backoff.deadline_s == 2.0
    assert settings.lookup_backoff.deadline_s == 1.0  # never longer than one request's timeout
    assert parse_settings(StoreURL.parse("dynamodb://p?region=eu-west-1&deadline=0")).deadline_s == 0.0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("dynamodb://AKIAEXAMPLE:s3cr3t@prefix?region=eu-west-1", "credentials never go into"),
        ("dynamodb://prefix?regoin=eu-west-1", "unknown option 'regoin'; did you mean 'region'?"),
        ("dynamodb://prefix?deadlien=5", "did you mean 'deadline'?"),
        ("dynamodb://prefix?credentials=AKIAEXAMPLE", "option credentials='AKIAEXAMPLE' must be one of default"),
        ("dynamodb://prefix?credentials=placeholder", "only for a local endpoint"),
        ("dynamodb://prefix?billing=provisioned&read_capacity=5", "needs read_capacity= and write_capacity="),
        ("dynamodb://prefix?billing=reserved", "option billing='reserved' must be one of on_demand, provisioned"),
        ("dynamodb://prefix?write_capacity=5", "billing=provisioned only"),
        ("dynamodb://prefix?write_rate=fast", "option write_rate='fast' must be a number"),
        ("dynamodb://prefix?write_threads=0", "option write_threads='0' must be a whole number from 1 to 256"),
        ("dynamodb://prefix?write_threads=2.5", "must be a whole number"),
        ("dynamodb://prefix?deadline=-1", "option deadline='-1' must be a number >= 0"),
        ("dynamodb://prefix?timeout=0", "option timeout='0' must be a number >= 0.1"),
        ("dynamodb://prefix?consistent_reads=maybe", "must be a boolean"),
        ("dynamodb://prefix?endpoint=127.0.0.1:8000", "must be an http:// or https:// URL"),
        ("dynamodb://bad/prefix", "expected dynamodb://TABLE_PREFIX"),
        ("dynamodb://prefix:8000", "expected dynamodb://TABLE_PREFIX"),
        ("dynamodb://a*b", "the table prefix must be"),
        ("dynamodb://prod.babyweight", "the table prefix must be"),
    ],
)
def test_bad_urls_are_configuration_errors_with_a_reason(url: str, complaint: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        parse_settings(StoreURL.parse(url))
    assert complaint in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_version_ids_that_cannot_name_a_table_are_refused() -> None:
    layout = Layout("prefix")
    for bad in ("", "a.b", "a/b", "x" * 65):
        with pytest.raises(VersionError, match="invalid version id"):
            layout.version_table(bad)


def _no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup off the loopback


def _unique_endpoint() -> str:
    # A unique endpoint, so that no client cached by an earlier test answers instead.
    return f"http://127.0.0.1:9/{uuid.uuid4().hex}"


def test_a_missing_region_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_aws_environment(monkeypatch, tmp_path)
    url = f"dynamodb://prefix?endpoint={_unique_endpoint()}&credentials=placeholder"
    with pytest.raises(StoreConfigError, match=r"needs an AWS region: add \?region=\.\.\. or set AWS_REGION"):
        open_backend(url)
    with pytest.raises(StoreConfigError, match="needs an AWS region"):
        open_reader(url)


def test_aws_region_comes_before_aws_default_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert parse_settings(StoreURL.parse("dynamodb://p")).region == "eu-central-1"
    assert parse_settings(StoreURL.parse("dynamodb://p?region=us-east-2")).region == "us-east-2"
    monkeypatch.delenv("AWS_REGION")
    url = f"dynamodb://p?endpoint={_unique_endpoint()}&credentials=placeholder"
    backend = open_backend(url)  # boto3's own fallback, AWS_DEFAULT_REGION
    assert backend.client.meta.region_name == "eu-west-1"  # type: ignore[attr-defined]
    backend.close()


def test_a_misspelt_region_is_refused_with_the_closest_one() -> None:
    refusal = r"region 'eu-wset-1' is not a DynamoDB region; did you mean 'eu-west-1'\? Fix region="
    with pytest.raises(StoreConfigError, match=refusal):
        open_backend("dynamodb://prefix?region=eu-wset-1")
    with pytest.raises(StoreConfigError, match=r"supported format\. Fix: give an AWS region name in region="):
        open_backend("dynamodb://prefix?region=eu%20west")


def test_an_unknown_profile_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_aws_environment(monkeypatch, tmp_path)
    with pytest.raises(StoreConfigError, match=r"nosuchprofile.*Fix: name a profile of ~/\.aws/config in profile="):
        open_backend(f"dynamodb://prefix?region=eu-west-1&profile=nosuchprofile&endpoint={_unique_endpoint()}")
