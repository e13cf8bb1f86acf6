"""What a ``dynamodb://`` URL says: one frozen :class:`Settings`, read with the store's typed option parser.

``dynamodb://PREFIX?region=eu-west-1`` selects every table whose name starts with ``PREFIX.``. The URL
carries no credentials: they come from the standard AWS chain (environment, shared config and
credentials files, ``profile=``, SSO, instance or task roles). Options, all optional:

``region``          AWS region (else ``AWS_REGION``, then ``AWS_DEFAULT_REGION`` / the profile's region).
``endpoint``        Endpoint URL, e.g. ``http://127.0.0.1:8000`` for DynamoDB Local (else
                    ``AWS_ENDPOINT_URL_DYNAMODB`` / ``AWS_ENDPOINT_URL``, as boto3 reads them, then AWS).
``profile``         Named profile from the shared AWS config (else ``AWS_PROFILE``).
``credentials``     ``default`` (the chain above) or ``placeholder``: fixed non-secret keys for DynamoDB
                    Local, which checks none; refused without ``endpoint`` so it never reaches AWS.
``billing``         ``on_demand`` (default) or ``provisioned`` for new version tables.
``read_capacity``,  Provisioned units of each new version table (required with
``write_capacity``  ``billing=provisioned``).
``write_rate``      Items per second one writer process sends at most (client-side cap; unset: no cap).
``write_threads``   BatchWriteItem/BatchGetItem requests one process keeps in flight (default 8).
``deadline``        Seconds a request keeps retrying throttling, unprocessed items and an unreachable
                    endpoint before it fails (default 120; 0: no retries). A single metadata call (alias,
                    lock, records) retries at most 10 s of it, an API lookup at most 3 s.
``consistent_reads`` ``true`` makes the API's lookups strongly consistent (twice the read units).
``timeout``         Seconds per HTTP request, connecting included (default 10).

Every retry is :class:`precompute.store.retry.Backoff` (botocore's own retries are off), so a call gives
up after at most its deadline plus one ``timeout``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from precompute.store import StoreConfigError, StoreURL
from precompute.store.retry import Backoff

OPTIONS = (
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
)
# No dots: "." separates the prefix from ".meta" and ".v.VERSION" (see .layout), so every table name parses
# one way. 180 leaves room for ".v." and a 64-character version id within DynamoDB's 255 characters.
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,180}")
#: A single metadata call retries for at most this long, whatever ``deadline`` says: ``precompute versions``
#: against an endpoint that is down should fail in seconds, not minutes.
CALL_DEADLINE_S = 10.0
#: An API lookup retries for at most this long: a user is waiting for the answer.
LOOKUP_DEADLINE_S = 3.0


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
    def bulk_backoff(self) -> Backoff:
        """Retries of one BatchWriteItem/BatchGetItem request. The deadline, not an attempt count, bounds
        them: throttling can last as long as a load."""
        return Backoff(base_s=0.05, cap_s=2.0, deadline_s=self.deadline_s, max_attempts=1_000_000)

    @property
    def call_backoff(self) -> Backoff:
        """Retries of one metadata or table call."""
        return Backoff(base_s=0.05, cap_s=1.0, deadline_s=min(self.deadline_s, CALL_DEADLINE_S), max_attempts=1_000)

    @property
    def lookup_backoff(self) -> Backoff:
        """Retries of one API request (short: a user is waiting, and a failed lookup answers 503)."""
        deadline = min(self.deadline_s, self.timeout_s, LOOKUP_DEADLINE_S)
        return Backoff(base_s=0.01, cap_s=0.25, deadline_s=deadline, max_attempts=1_000)


def parse_settings(url: StoreURL) -> Settings:
    """The settings of a ``dynamodb://`` URL; any mistake is a :class:`StoreConfigError` naming the fix."""
    # StoreURL.host is lower-cased by urlsplit; table names are case-sensitive, so read the raw netloc.
    netloc = urlsplit(url.raw).netloc
    if "@" in netloc:
        raise StoreConfigError(
            f"{url}: credentials never go into a dynamodb:// URL; use the standard AWS chain "
            "(environment, ~/.aws, profile=..., an instance or task role)"
        )
    if url.path not in ("", "/") or ":" in netloc:
        raise StoreConfigError(f"{url}: expected dynamodb://TABLE_PREFIX?region=...")
    if not _PREFIX.fullmatch(netloc):
        raise StoreConfigError(
            f"{url}: the table prefix must be 1-180 characters of A-Z a-z 0-9 _ - (no dots: they separate "
            "the prefix from the rest of each table name)"
        )
    options = url.typed_options(OPTIONS)

    placeholder = options.choice("credentials", ("default", "placeholder"), "default") == "placeholder"
    endpoint = options.text("endpoint")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreConfigError(
                f"{url}: option endpoint={endpoint!r} must be an http:// or https:// URL, "
                "e.g. endpoint=http://127.0.0.1:8000"
            )
    if placeholder and endpoint is None:
        raise StoreConfigError(
            f"{url}: credentials=placeholder is only for a local endpoint=; AWS needs real credentials "
            "(secrets never go into URLs)"
        )
    provisioned = options.choice("billing", ("on_demand", "provisioned"), "on_demand") == "provisioned"
    read_capacity = options.optional_integer("read_capacity", minimum=1)
    write_capacity = options.optional_integer("write_capacity", minimum=1)
    if provisioned and (read_capacity is None or write_capacity is None):
        raise StoreConfigError(f"{url}: billing=provisioned needs read_capacity= and write_capacity=")
    if not provisioned and (read_capacity is not None or write_capacity is not None):
        raise StoreConfigError(f"{url}: read_capacity/write_capacity apply to billing=provisioned only")
    return Settings(
        prefix=netloc,
        # boto3 reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION (which the AWS CLI v2 and
        # Lambda, ECS and the other SDKs use, ahead of AWS_DEFAULT_REGION).
        region=options.text("region") or os.environ.get("AWS_REGION") or None,
        endpoint=endpoint,
        profile=options.text("profile"),
        placeholder_credentials=placeholder,
        provisioned=provisioned,
        read_capacity=read_capacity,
        write_capacity=write_capacity,
        write_rate=options.optional_number("write_rate", minimum=1.0),
        write_threads=options.integer("write_threads", 8, minimum=1, maximum=256),
        deadline_s=options.number("deadline", 120.0, minimum=0.0),
        consistent_reads=options.flag("consistent_reads", False),
        timeout_s=options.number("timeout", 10.0, minimum=0.1),
    )
