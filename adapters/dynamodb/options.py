"""Settings, table names, the per-process boto3 client and error translation for ``dynamodb://``.

``dynamodb://PREFIX?region=eu-west-1`` selects every table whose name starts with ``PREFIX.``. The URL
carries no credentials: they come from the standard AWS chain (environment, shared config and
credentials files, ``profile=``, SSO, instance or task roles). Options, all optional:

``region``          AWS region (else ``AWS_DEFAULT_REGION`` / the profile's region).
``endpoint``        Endpoint URL, e.g. ``http://127.0.0.1:8000`` for DynamoDB Local.
``profile``         Named profile from the shared AWS config.
``credentials``     ``default`` (the chain above) or ``placeholder``: fixed non-secret keys for DynamoDB
                    Local, which checks none; refused without ``endpoint`` so it never reaches AWS.
``billing``         ``on_demand`` (default) or ``provisioned`` for new version tables.
``read_capacity``,  Provisioned units of each new version table (required with
``write_capacity``  ``billing=provisioned``).
``write_rate``      Items per second one writer process sends at most (client-side cap; unset: no cap).
``write_threads``   BatchWriteItem/BatchGetItem requests one process keeps in flight (default 8).
``deadline``        Seconds a bulk request keeps retrying unprocessed items and throttling (default 120).
``consistent_reads`` ``true`` makes the API's lookups strongly consistent (twice the read units).
``timeout``         Seconds per HTTP request (default 10).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from precompute.store import StoreError, StoreUnavailable, StoreURL

#: Largest item DynamoDB stores: attribute names and values together, 400 KiB.
MAX_ITEM_BYTES = 400 * 1024
#: Largest partition-key value.
MAX_KEY_BYTES = 2048
KEY_ATTR = "k"
VALUE_ATTR = "v"

# No dots: "." separates the prefix from ".meta" and ".v.VERSION", so every table name parses one way.
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,180}$")
_VERSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_OPTIONS = {
    "region",
    "endpoint",
    "profile",
    "credentials",
    "billing",
    "read_capacity",
    "write_capacity",
    "write_rate",
    "write_threads",
    "deadline",
    "consistent_reads",
    "timeout",
}
#: Error codes worth another attempt: capacity exhausted, or the service blipped.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)
PLACEHOLDER_KEY = "precomputelocal"  # DynamoDB Local takes letters and digits only


@dataclass(frozen=True)
class Settings:
    prefix: str
    region: str | None = None
    endpoint: str | None = None
    profile: str | None = None
    placeholder_credentials: bool = False
    provisioned: bool = False
    read_capacity: int | None = None
    write_capacity: int | None = None
    write_rate: float | None = None
    write_threads: int = 8
    deadline_s: float = 120.0
    consistent_reads: bool = False
    timeout_s: float = 10.0

    @property
    def meta_table(self) -> str:
        return f"{self.prefix}.meta"

    def version_table(self, version: str) -> str:
        if not _VERSION_ID.match(version):
            raise StoreError(f"invalid version id {version!r}: letters, digits, '-' and '_', at most 64")
        return f"{self.prefix}.v.{version}"

    @property
    def version_table_prefix(self) -> str:
        return f"{self.prefix}.v."


def parse_settings(url: StoreURL) -> Settings:
    # StoreURL.host is lower-cased by urlsplit; table names are case-sensitive, so read the raw netloc.
    netloc = urlsplit(url.raw).netloc
    if "@" in netloc:
        raise StoreError(
            f"{url}: credentials never go into a dynamodb:// URL; use the standard AWS chain "
            "(environment, ~/.aws, profile=..., an instance or task role)"
        )
    if url.path not in ("", "/") or ":" in netloc:
        raise StoreError(f"{url}: expected dynamodb://TABLE_PREFIX?region=...")
    if not _PREFIX.match(netloc):
        raise StoreError(f"{url}: the table prefix must be 1-180 characters of A-Z a-z 0-9 _ -")
    unknown = sorted(set(url.options) - _OPTIONS)
    if unknown:
        raise StoreError(f"{url}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}")

    credentials = url.option("credentials", "default")
    if credentials not in ("default", "placeholder"):
        raise StoreError(
            f"{url}: credentials= takes 'default' or 'placeholder' (for DynamoDB Local); secrets never go into URLs"
        )
    endpoint = url.option("endpoint") or None
    if credentials == "placeholder" and endpoint is None:
        raise StoreError(f"{url}: credentials=placeholder is only for a local endpoint=; AWS needs real credentials")
    billing = url.option("billing", "on_demand")
    if billing not in ("on_demand", "provisioned"):
        raise StoreError(f"{url}: billing= takes 'on_demand' or 'provisioned'")
    read_capacity = _int(url, "read_capacity")
    write_capacity = _int(url, "write_capacity")
    if billing == "provisioned" and (read_capacity is None or write_capacity is None):
        raise StoreError(f"{url}: billing=provisioned needs read_capacity= and write_capacity=")
    if billing == "on_demand" and (read_capacity is not None or write_capacity is not None):
        raise StoreError(f"{url}: read_capacity/write_capacity apply to billing=provisioned only")
    return Settings(
        prefix=netloc,
        region=url.option("region") or None,
        endpoint=endpoint,
        profile=url.option("profile") or None,
        placeholder_credentials=credentials == "placeholder",
        provisioned=billing == "provisioned",
        read_capacity=read_capacity,
        write_capacity=write_capacity,
        write_rate=_float(url, "write_rate"),
        write_threads=_int(url, "write_threads") or 8,
        deadline_s=_float(url, "deadline") or 120.0,
        consistent_reads=_flag(url, "consistent_reads"),
        timeout_s=_float(url, "timeout") or 10.0,
    )


def _float(url: StoreURL, name: str) -> float | None:
    raw = url.option(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"{url}: {name}= must be a number, not {raw!r}") from None
    if not value > 0:
        raise StoreError(f"{url}: {name}= must be positive")
    return value


def _int(url: StoreURL, name: str) -> int | None:
    value = _float(url, name)
    if value is not None and value != int(value):
        raise StoreError(f"{url}: {name}= must be a whole number")
    return None if value is None else int(value)


def _flag(url: StoreURL, name: str) -> bool:
    raw = (url.option(name) or "false").lower()
    if raw not in _TRUE | _FALSE:
        raise StoreError(f"{url}: {name}= takes true or false")
    return raw in _TRUE


# -- one client per process ---------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """A boto3 client and the session it came from (the async reader signs with the same credentials)."""

    client: Any
    session: boto3.session.Session

    @property
    def region(self) -> str:
        region: str = self.client.meta.region_name
        return region

    @property
    def endpoint_url(self) -> str:
        endpoint: str = self.client.meta.endpoint_url
        return endpoint


_CONNECTIONS: dict[tuple[object, ...], Connection] = {}
_CONNECTIONS_MUTEX = threading.Lock()


def connection(settings: Settings) -> Connection:
    """The process's client for these settings: building one costs ~90 ms of CPU, so it is built once.

    boto3 clients are thread-safe; the pool is sized for every write thread plus the lock-renewal thread.
    """
    key = (
        os.getpid(),
        settings.region,
        settings.endpoint,
        settings.profile,
        settings.placeholder_credentials,
        settings.write_threads,
        settings.timeout_s,
    )
    with _CONNECTIONS_MUTEX:
        found = _CONNECTIONS.get(key)
        if found is None:
            found = _connect(settings)
            _CONNECTIONS[key] = found
        return found


def _connect(settings: Settings) -> Connection:
    placeholder = PLACEHOLDER_KEY if settings.placeholder_credentials else None
    try:
        session = boto3.session.Session(
            profile_name=settings.profile,
            region_name=settings.region,
            aws_access_key_id=placeholder,
            aws_secret_access_key=placeholder,
        )
        client = session.client(
            "dynamodb",
            endpoint_url=settings.endpoint,
            config=botocore.config.Config(
                max_pool_connections=settings.write_threads + 4,
                retries={"mode": "standard"},
                connect_timeout=settings.timeout_s,
                read_timeout=settings.timeout_s,
                tcp_keepalive=True,
            ),
        )
    except botocore.exceptions.NoRegionError:
        raise StoreError(
            "dynamodb:// needs an AWS region: add ?region=... to the URL or set AWS_DEFAULT_REGION"
        ) from None
    except botocore.exceptions.ProfileNotFound as exc:
        raise StoreError(f"dynamodb://: {exc}") from None
    return Connection(client, session)


# -- errors -------------------------------------------------------------------------------------


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        code: str | None = exc.response.get("Error", {}).get("Code")
        return code
    return None


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        return error_code(exc) in RETRYABLE_CODES
    return isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError)


def translate(exc: BaseException, doing: str) -> StoreError:
    """The store's exception for a boto3 failure, naming what was being done."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StoreError(
            f"{doing}: no AWS credentials found (environment, ~/.aws, profile=, or an instance/task role)"
        )
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return StoreUnavailable(f"{doing}: DynamoDB unreachable: {exc}")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        if code in RETRYABLE_CODES:
            return StoreUnavailable(f"{doing}: {code}: {error.get('Message', '')}")
        return StoreError(f"{doing}: {code}: {error.get('Message', '')}")
    return StoreError(f"{doing}: {exc}")
