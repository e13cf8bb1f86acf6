"""The ``bigtable://`` URL and its options (adapters/bigtable/options.py): no server needed."""

from __future__ import annotations

import pytest

from precompute.adapters.bigtable import BigtableReader
from precompute.adapters.bigtable.layout import decode_lease, encode_lease, record_row, version_prefix
from precompute.adapters.bigtable.options import DEADLINE_S, Settings
from precompute.store import StoreConfigError, StoreError, StoreURL, VersionError


def settings(url: str, environ: dict[str, str] | None = None) -> Settings:
    return Settings.from_url(StoreURL.parse(url), {} if environ is None else environ)


def test_url_names_project_instance_and_table_and_takes_options() -> None:
    where = settings("bigtable://my-proj/my-inst/Preds.v1?app_profile=batch&timeout=5&deadline=30")
    assert (where.project, where.instance, where.table) == ("my-proj", "my-inst", "Preds.v1")
    assert where.app_profile == "batch"
    assert where.timeout_s == 5.0
    assert where.deadline_s == 30.0
    assert where.emulator is None
    assert where.table_path == "projects/my-proj/instances/my-inst/tables/Preds.v1"


def test_defaults() -> None:
    where = settings("bigtable://proj/inst/table")
    assert (where.app_profile, where.timeout_s, where.deadline_s, where.emulator) == (None, None, DEADLINE_S, None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bigtable://user:secret@proj/inst/table", "credentials"),
        ("bigtable://proj/inst", "PROJECT/INSTANCE/TABLE"),
        ("bigtable://proj/inst/table/extra", "PROJECT/INSTANCE/TABLE"),
        ("bigtable://proj/Inst_1/table", "instance id"),
        ("bigtable://proj/inst/ta ble", "table id"),
        ("bigtable://proj/inst/table?timout=3", "unknown option 'timout'; did you mean 'timeout'"),
        ("bigtable://proj/inst/table?timeout=soon", "timeout='soon' must be a number"),
        ("bigtable://proj/inst/table?timeout=0", "timeout='0' must be a number"),
        ("bigtable://proj/inst/table?deadline=-1", "deadline='-1' must be a number"),
        ("bigtable://proj/inst/table?app_profile=a%20b", "app_profile='a b' must be an app profile id"),
        ("bigtable://proj/inst/table?emulator=localhost", "emulator='localhost' must be HOST:PORT"),
        ("bigtable://proj/inst/table?emulator=127.0.0.1:0", "emulator='127.0.0.1:0' must be HOST:PORT"),
        ("bigtable://proj/inst/table?emulater=127.0.0.1:8086", "did you mean 'emulator'"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message) as caught:
        settings(url)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_emulator_is_the_urls_option_else_the_environment_variable() -> None:
    environ = {"BIGTABLE_EMULATOR_HOST": "127.0.0.1:9000"}
    assert settings("bigtable://proj/inst/table", environ).emulator == "127.0.0.1:9000"
    assert settings("bigtable://proj/inst/table?emulator=[::1]:8086", environ).emulator == "[::1]:8086"
    assert settings("bigtable://proj/inst/table?emulator=bt-emulator:8086", {}).emulator == "bt-emulator:8086"
    assert settings("bigtable://proj/inst/table", {"BIGTABLE_EMULATOR_HOST": ""}).emulator is None


def test_lookups_wait_less_than_the_batch_side_unless_the_url_says() -> None:
    assert settings("bigtable://proj/inst/table").timeout_s is None
    assert BigtableReader(StoreURL.parse("bigtable://proj/inst/table")).timeout_s == 5.0
    assert BigtableReader(StoreURL.parse("bigtable://proj/inst/table?timeout=12")).timeout_s == 12.0


def test_lease_round_trips_and_sorts_by_expiry() -> None:
    assert decode_lease(encode_lease("host:12:ab|c", 1_700_000_000_123)) == (1_700_000_000_123, "host:12:ab|c")
    assert encode_lease("z", 999) < encode_lease("a", 1000)


def test_version_prefixes_never_prefix_one_another_and_follow_the_one_version_rule() -> None:
    assert not version_prefix("v10").startswith(version_prefix("v1"))
    assert record_row("v1") == b"~record#v1"
    for bad in ("v1#x", "", "x" * 65, "~alias"):
        with pytest.raises(VersionError, match="invalid version"):
            version_prefix(bad)
    with pytest.raises(StoreError, match="invalid version"):
        record_row("v1#x")
