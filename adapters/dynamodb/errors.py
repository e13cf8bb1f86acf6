"""One table from DynamoDB's errors to the store's, for boto3 (the batch side) and the API's wire client.

Both sides speak the same protocol, so a failure has the same error code either way: boto3 raises it as
a ``ClientError``, :mod:`.wire` as a :class:`ServiceError`. What cannot reach the service at all is a
botocore ``ConnectionError``/``HTTPClientError`` or, from the wire client, a :class:`TransportError`.

=============================================  ===========================  ============================
failure                                        retried (store.retry)        then raised as
=============================================  ===========================  ============================
endpoint unreachable, connection reset,        yes, until the deadline      StoreUnavailable
timeout, bad CRC, HTTP 5xx
throttling, InternalServerError, ...           yes, until the deadline      StoreUnavailable
(:data:`RULES`, ``retry``)
no or bad credentials, AccessDenied,           no                           StoreConfigError, naming
no or unknown region, unknown profile                                       the fix
missing table / table busy /                   no                           TableMissing / TableInUse /
condition refused                                                           ConditionFailed (the caller
                                                                            decides what they mean)
anything else                                  no                           StoreError
=============================================  ===========================  ============================

The bulk write path is the one exception to the last column: items the server throttled or left
unprocessed until the deadline are a :class:`~precompute.store.errors.WriteError` that names their keys
(:mod:`.writes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from precompute.store import StoreConfigError, StoreError, StoreUnavailable


class TableMissing(StoreError):
    """The table does not exist (a version that was never written or was dropped; nothing published yet)."""


class TableInUse(StoreError):
    """The table exists already, or is being created, updated or deleted."""


class ConditionFailed(StoreError):
    """A conditional write was refused; ``item`` is the item that refused it, when the server sent it."""

    def __init__(self, message: str, item: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.item = item


class TransactionCanceled(StoreError):
    """A TransactWriteItems was cancelled; ``reasons`` holds one code per action, in order (``"None"`` for an
    action that was fine, ``"ConditionalCheckFailed"``, ``"TransactionConflict"``...)."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class ServiceError(Exception):
    """An error answer of DynamoDB's JSON protocol, as the wire client reads it (boto3: ``ClientError``)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class TransportError(Exception):
    """The wire client got no usable answer: connection refused or reset, timeout, bad CRC32."""


@dataclass(frozen=True)
class Rule:
    kind: type[StoreError]
    retry: bool = False
    fix: str = ""


_CREDENTIALS_FIX = (
    "check the credentials of the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, "
    "profile=, an instance or task role)"
)
#: Error code -> what it becomes. The retryable ones mean "capacity exhausted, or the service blipped".
RULES: dict[str, Rule] = {
    **{
        code: Rule(StoreUnavailable, retry=True)
        for code in (
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
            "LimitExceededException",
            "InternalServerError",
            "InternalFailure",
            "ServiceUnavailable",
            "TransactionInProgressException",
        )
    },
    "UnrecognizedClientException": Rule(
        StoreConfigError, fix="AWS does not know this access key ID: " + _CREDENTIALS_FIX
    ),
    "InvalidSignatureException": Rule(
        StoreConfigError, fix="the secret key does not match its key ID: " + _CREDENTIALS_FIX
    ),
    "IncompleteSignatureException": Rule(StoreConfigError, fix=_CREDENTIALS_FIX),
    "MissingAuthenticationTokenException": Rule(StoreConfigError, fix=_CREDENTIALS_FIX),
    "ExpiredTokenException": Rule(
        StoreConfigError, fix="the session credentials have expired: renew them (aws sso login, a new role session)"
    ),
    "AccessDeniedException": Rule(
        StoreConfigError,
        fix="grant these credentials the IAM actions listed in docs/dynamodb.md on table/PREFIX.* "
        "(or check region= and the table prefix)",
    ),
    "ResourceNotFoundException": Rule(TableMissing),
    "ResourceInUseException": Rule(TableInUse),
    "ConditionalCheckFailedException": Rule(ConditionFailed),
    "TransactionCanceledException": Rule(TransactionCanceled),
}

#: What cannot reach DynamoDB (refused, reset, DNS, timeouts): retried, then StoreUnavailable.
_UNREACHABLE = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError, TransportError)
#: botocore's own configuration failures, each with its fix.
_CONFIG: tuple[tuple[type[Exception], str], ...] = (
    (botocore.exceptions.NoRegionError, "dynamodb:// needs an AWS region: add ?region=... or set AWS_REGION"),
    (botocore.exceptions.InvalidRegionError, "give an AWS region name in region=, e.g. region=eu-west-1"),
    (botocore.exceptions.ProfileNotFound, "name a profile of ~/.aws/config in profile= (or AWS_PROFILE), or add it"),
    (botocore.exceptions.ConfigParseError, "correct the shared AWS config file"),
    (
        botocore.exceptions.NoCredentialsError,
        "no AWS credentials found: " + _CREDENTIALS_FIX + " (for DynamoDB Local: credentials=placeholder)",
    ),
    (botocore.exceptions.PartialCredentialsError, _CREDENTIALS_FIX),
    (botocore.exceptions.CredentialRetrievalError, _CREDENTIALS_FIX),
    (botocore.exceptions.NoAuthTokenError, _CREDENTIALS_FIX),
    (botocore.exceptions.TokenRetrievalError, "renew the SSO session (aws sso login)"),
    (botocore.exceptions.SSOError, "renew the SSO session (aws sso login)"),
)
#: What :func:`translated` turns into store errors; anything else (a bug) goes through untouched.
SDK_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ServiceError, TransportError)


def error_code(exc: BaseException) -> str | None:
    """The service's error code (``ThrottlingException``...), or ``None`` when the service did not answer."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, botocore.exceptions.ClientError):
        code: str | None = exc.response.get("Error", {}).get("Code")
        return code
    return None


def _status(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    if isinstance(exc, botocore.exceptions.ClientError):
        status: int = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status
    return 0


def unreachable(exc: BaseException) -> bool:
    """True for a failure to reach the service at all (as opposed to an answer that refused the request)."""
    return isinstance(exc, _UNREACHABLE)


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: unreachable, throttled, or the service failed (HTTP 5xx)."""
    if unreachable(exc):
        return True
    code = error_code(exc)
    if code is None:
        return False
    rule = RULES.get(code)
    return rule.retry if rule is not None else _status(exc) >= 500


def translate(exc: BaseException, what: str) -> StoreError:
    """The store's exception for ``exc``, naming ``what`` was being done (and the fix, for configuration)."""
    if isinstance(exc, StoreError):
        return exc
    if unreachable(exc):
        return StoreUnavailable(f"{what}: DynamoDB unreachable: {exc}")
    for kind, fix in _CONFIG:
        if isinstance(exc, kind):
            return StoreConfigError(f"{what}: {str(exc).rstrip('.')}. Fix: {fix}")
    code = error_code(exc)
    if code is None:
        return StoreError(f"{what}: {exc}")
    message = exc.message if isinstance(exc, ServiceError) else _client_message(exc)
    rule = RULES.get(code) or Rule(StoreUnavailable if _status(exc) >= 500 else StoreError)
    text = f"{what}: {code}: {message}" + (f". Fix: {rule.fix}" if rule.fix else "")
    if rule.kind is ConditionFailed:
        item = exc.response.get("Item") if isinstance(exc, botocore.exceptions.ClientError) else None
        return ConditionFailed(text, item)
    if rule.kind is TransactionCanceled:
        found = exc.response.get("CancellationReasons", []) if isinstance(exc, botocore.exceptions.ClientError) else []
        return TransactionCanceled(text, [str(reason.get("Code", "None")) for reason in found])
    return rule.kind(text)


def _client_message(exc: BaseException) -> str:
    assert isinstance(exc, botocore.exceptions.ClientError)
    message: str = exc.response.get("Error", {}).get("Message", "")
    return message


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Raise the store's exception (:func:`translate`) for any SDK error inside the block."""
    try:
        yield
    except SDK_ERRORS as exc:
        raise translate(exc, what) from exc
