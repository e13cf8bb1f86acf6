"""Store URLs: one string selects the backend and where it lives.

``scheme://[user[:password]@]host[:port]/path?option=value``. The parsed form keeps the pieces adapters
need; :meth:`StoreURL.redacted` is what goes into logs, summaries and error messages.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from precompute.store.errors import StoreConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class StoreURL:
    raw: str
    scheme: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> StoreURL:
        if "://" not in raw:
            raise StoreConfigError(f"store URL {raw!r} has no scheme: expected e.g. 'sqlite:///var/store.db'")
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError as exc:
            raise StoreConfigError(f"store URL {cls._redact(raw)!r}: {exc}") from None
        return cls(
            raw=raw,
            scheme=parts.scheme.lower(),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=port,
            path=unquote(parts.path),
            options=dict(parse_qsl(parts.query, keep_blank_values=True)),
        )

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)

    def typed_options(self, known: Iterable[str]) -> URLOptions:
        """The query options, checked against the ``known`` names (an unknown one is an error that
        suggests the closest known name) and read with typed accessors."""
        return URLOptions(self, tuple(known))

    def redacted(self) -> str:
        return self._redact(self.raw)

    @staticmethod
    def _redact(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.password is None:
            return raw
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"StoreURL({self.redacted()!r})"


class URLOptions:
    """Typed reads of a store URL's ``?name=value`` options, one parser for every backend.

    Every mistake is a :class:`~precompute.store.errors.StoreConfigError` (bad configuration: exit 2) that
    names the option and the fix. An empty value (``?ttl=``) reads as the default.
    """

    def __init__(self, url: StoreURL, known: tuple[str, ...]) -> None:
        self.url = url
        self.known = known
        for name in url.options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                listed = ", ".join(sorted(known)) or "none"
                raise StoreConfigError(f"{url}: unknown option {name!r}; {hint}{url.scheme}:// takes: {listed}")

    def _raw(self, name: str) -> str | None:
        if name not in self.known:  # a programming error in the adapter, not the user's
            raise KeyError(f"option {name!r} is not declared for {self.url.scheme}://")
        raw = self.url.options.get(name)
        return None if raw is None or raw == "" else raw

    def _bad(self, name: str, raw: str, expected: str) -> StoreConfigError:
        return StoreConfigError(f"{self.url}: option {name}={raw!r} must be {expected}")

    def text(self, name: str, default: str | None = None) -> str | None:
        raw = self._raw(name)
        return default if raw is None else raw

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        allowed = tuple(choices)
        if raw.lower() not in allowed:
            raise self._bad(name, raw, "one of " + ", ".join(allowed))
        return raw.lower()

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._bad(name, raw, "a boolean (true or false)")

    def number(self, name: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
        value = self.optional_number(name, minimum, maximum)
        return default if value is None else value

    def optional_number(self, name: str, minimum: float = 0.0, maximum: float = math.inf) -> float | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not minimum <= value <= maximum:
            bounds = f"from {minimum:g} to {maximum:g}" if math.isfinite(maximum) else f">= {minimum:g}"
            raise self._bad(name, raw, f"a number {bounds}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.optional_integer(name, minimum, maximum)
        return default if value is None else value

    def optional_integer(self, name: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        raw = self._raw(name)
        if raw is None:
            return None
        value = int(raw) if raw.isascii() and raw.lstrip("-").isdigit() else None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise self._bad(name, raw, f"a whole number {bounds}")
        return value
