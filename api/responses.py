"""What every answer path shares: the error a lookup ends in, and the response body spliced around a value."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

RETRY = {"Retry-After": "1"}
NON_FINITE = "the model returned a non-finite prediction for these features"


class LookupFailed(Exception):
    """A lookup that ends in an error response: HTTP status, message and extra fields for the body.

    ``source`` labels the request in the metrics (which step gave up); ``headers`` go on the response.
    """

    def __init__(
        self, status: int, message: str, *, source: str = "none", headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.source = source
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": str(self), **self.extra}


def splice(key: str, value: bytes, source: bytes, model_version: str | None) -> bytes:
    """The response body around a stored (or online) value, without decoding it."""
    version = b'"' + model_version.encode() + b'"' if model_version is not None else b"null"
    return b"".join(
        (
            b'{"key":',
            json.dumps(key).encode(),
            b',"prediction":',
            value,
            b',"source":"',
            source,
            b'","model_version":',
            version,
            b"}",
        )
    )


# -- POST /predict: one JSON object per item -------------------------------------------------------------
# A batch answer is written as the bytes json.dumps() would write for {"model_version", "results"} (its
# default separators, ", " and ": ", and ASCII escapes), with each prediction spliced in as the store (or the
# model) holds it, as GET /predict/{key} does, rather than decoded and encoded again.

#: A hit's item: ``PRECOMPUTED_ITEM % (quoted(key), value)``.
PRECOMPUTED_ITEM = b'{"key": %b, "prediction": %b, "source": "precomputed", "status": 200}'


def quoted(text: str) -> bytes:
    """``text`` as a JSON string, the bytes ``json.dumps(text)`` writes."""
    return encode_basestring_ascii(text).encode()


def batch_item(key: str, value: bytes, source: bytes, model_version: str | None) -> bytes:
    """An item answered with a value that carries its model version (online, or the default)."""
    version = quoted(model_version) if model_version is not None else b"null"
    return b'{"key": %b, "prediction": %b, "source": "%b", "model_version": %b, "status": 200}' % (
        quoted(key),
        value,
        source,
        version,
    )


def batch_error(item: dict[str, Any]) -> bytes:
    """An item that is an error: its fields as json.dumps writes them."""
    return json.dumps(item).encode()


def batch_body(model_version: str | None, items: list[bytes]) -> bytes:
    """The whole answer around its items."""
    return b'{"model_version": %b, "results": [%b]}' % (json.dumps(model_version).encode(), b", ".join(items))
