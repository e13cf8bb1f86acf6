"""Key and value encoding, defined once for every backend.

Formats are recorded in every version's record (``key_format``, ``value_format``) so that a reader can
refuse data it cannot read (:meth:`precompute.store.versions.VersionRecord.check_readable`):

* A key is the canonical key string (see ``precompute.space``) encoded as UTF-8. It is at most
  :data:`MAX_KEY_BYTES` bytes and holds no control characters.
* A value is the prediction in the exact shape the API returns: a compact JSON object of the model's
  named outputs, e.g. ``{"weight_pounds":7.31}``. A hit is spliced into the response without a decode.
  Floats are written in the shortest form that reads back to the same float32.
* Value format 2 (this one) adds the expiry mark of :func:`expiring`: a value may start with
  ``~<unix seconds>~`` before its JSON object. Only :class:`~precompute.store.backend.Reader` strips it
  (:func:`unexpired`), so an expired answer reads as absent everywhere; a format-1 reader refuses a
  format-2 version instead of splicing the mark into a response.
* A version id is 1 to 64 letters, digits, ``-`` and ``_`` (:func:`check_version`): every backend can use
  it as it is in a table name, a key prefix or a row key.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping

from precompute.store.errors import VersionError

KEY_FORMAT = 1
VALUE_FORMAT = 2
MAX_KEY_BYTES = 1024

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_VERSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_version(version: str) -> str:
    """``version`` itself if it is a valid version id, else :class:`~precompute.store.errors.VersionError`."""
    if not _VERSION_ID.fullmatch(version):
        raise VersionError(f"invalid version id {version[:80]!r}: 1 to 64 letters, digits, '-' and '_'")
    return version


class InvalidKey(ValueError):
    """A key that cannot be encoded (empty, too long, control characters)."""


def encode_key(key: str) -> bytes:
    data = key.encode("utf-8")
    if not data:
        raise InvalidKey("a key cannot be empty")
    if len(data) > MAX_KEY_BYTES:
        raise InvalidKey(f"a key is at most {MAX_KEY_BYTES} bytes, this one has {len(data)}")
    if _CONTROL.search(key):
        raise InvalidKey("a key cannot contain control characters")
    return data


def control_free(text: str) -> bool:
    """Whether ``text`` holds no control character (one that :func:`encode_key` refuses in a key)."""
    return _CONTROL.search(text) is None


def decode_key(data: bytes) -> str:
    return data.decode("utf-8")


def format_float32(value: float) -> str:
    """Shortest decimal that reads back to the same float32 (``7.31``, not ``7.309999942779541``)."""
    if not math.isfinite(value):
        raise ValueError(f"cannot store a non-finite prediction ({value})")
    (target,) = struct.unpack("<f", struct.pack("<f", value))
    for digits in range(1, 10):
        text = f"{target:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == target:
            return _plain(text)
    return _plain(repr(target))


def _plain(text: str) -> str:
    # '%g' writes exponents as e-05; JSON takes that, but keep the shorter e-5 form Arrow also writes.
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else ""
        text = f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
    return text


def encode_value(prediction: Mapping[str, float | int | str]) -> bytes:
    """Encode a prediction (named outputs) as the compact JSON object the API returns."""
    parts = []
    for name, value in prediction.items():
        rendered = format_float32(value) if isinstance(value, float) else json.dumps(value)
        parts.append(f"{json.dumps(name)}:{rendered}")
    return ("{" + ",".join(parts) + "}").encode("utf-8")


#: The first byte of a value that expires (an online answer written back with a TTL): ``~<unix seconds>~``
#: before the JSON object, which itself always starts with ``{``. Any backend stores it as it is.
EXPIRING = b"~"


def expiring(value: bytes, expires_at: float) -> bytes:
    """``value`` marked to read as absent from ``expires_at`` (unix seconds) on."""
    return b"~%d~" % math.ceil(expires_at) + value


def unexpired(stored: bytes, now: float) -> bytes | None:
    """``stored`` without its expiry mark, or None once it has expired; an unmarked value as it is."""
    return split_expiry(stored, now)[0]


def split_expiry(stored: bytes, now: float) -> tuple[bytes | None, int | None]:
    """``(value, expires_at)`` of a stored value: the value without its mark and the unix second from which it
    reads as absent; ``(stored, None)`` for an unmarked value, which never expires; ``(None, None)`` once
    expired."""
    if stored[:1] != EXPIRING:
        return stored, None
    end = stored.index(EXPIRING, 1)
    expires_at = int(stored[1:end])
    return (stored[end + 1 :], expires_at) if now < expires_at else (None, None)


def decode_value(data: bytes) -> dict[str, object]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a stored value must be a JSON object")
    return value
