"""The ``bigtable://`` store URL, parsed once into :class:`Settings`.

``bigtable://PROJECT/INSTANCE/TABLE[?option=value&...]``. Credentials never go in the URL (one with
``user:password@`` is refused): the clients use application default credentials, or none at all against
the emulator. Options, all optional:

``app_profile``  The app profile for every request (e.g. route the batch job to a batch cluster).
``timeout``      Seconds one data call may take, the client's own retries included (default 30 for the
                 batch job and the CLI, 5 for API lookups, so a lookup fails fast and the API answers 503).
``deadline``     Seconds a bulk write keeps resending failed rows, and a refused ``DropRowRange`` is
                 retried, before the call gives up (default 120).
``emulator``     ``HOST:PORT`` of a Bigtable emulator for this store alone. Without it the process-wide
                 ``BIGTABLE_EMULATOR_HOST`` decides, as for every Google client; with it, that variable
                 is ignored for this store (two stores of one process can then use different emulators).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from precompute.store import StoreConfigError, StoreURL

#: The variable every Google Bigtable client reads to talk to the emulator instead of Google.
EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
#: ``timeout`` defaults: the batch side can wait out a blip; a lookup should fail fast and let the
#: caller answer 503.
BACKEND_TIMEOUT_S = 30.0
READER_TIMEOUT_S = 5.0
#: ``deadline`` default: how long failed rows of a bulk write are resent before the write fails.
DEADLINE_S = 120.0

OPTIONS = ("app_profile", "timeout", "deadline", "emulator")
USAGE = "expected bigtable://PROJECT/INSTANCE/TABLE"

# Bigtable's own id rules, checked here so a typo fails with the URL in the message.
_INSTANCE_ID = re.compile(r"[a-z][-a-z0-9]{1,62}")
_TABLE_ID = re.compile(r"[-_.a-zA-Z0-9]{1,50}")
_APP_PROFILE_ID = re.compile(r"[_a-zA-Z0-9][-_.a-zA-Z0-9]{0,49}")
# host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9_.]+):([0-9]{1,5})")


@dataclass(frozen=True)
class Settings:
    """Where a ``bigtable://`` store lives and how long its calls may take."""

    project: str
    instance: str
    table: str
    app_profile: str | None
    #: ``None``: the caller's default (:data:`BACKEND_TIMEOUT_S` or :data:`READER_TIMEOUT_S`).
    timeout_s: float | None
    deadline_s: float
    #: The emulator every client of this store talks to (``None``: Google): the URL's ``emulator``
    #: option, else ``BIGTABLE_EMULATOR_HOST`` as it was when the store was opened.
    emulator: str | None

    @classmethod
    def from_url(cls, url: StoreURL, environ: Mapping[str, str] = os.environ) -> Settings:
        if url.username or url.password:
            raise StoreConfigError(
                f"{url}: credentials never go in a bigtable:// URL; the client uses application default "
                "credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login, or the "
                "attached service account)"
            )
        parts = url.path.strip("/").split("/")
        if not url.host or len(parts) != 2 or not all(parts):
            raise StoreConfigError(f"{url}: {USAGE}")
        instance, table = parts
        if not _INSTANCE_ID.fullmatch(instance):
            raise StoreConfigError(f"{url}: {instance!r} is not a Bigtable instance id; {USAGE}")
        if not _TABLE_ID.fullmatch(table):
            raise StoreConfigError(f"{url}: {table!r} is not a Bigtable table id (letters, digits, '-', '_', '.')")
        options = url.typed_options(OPTIONS)
        app_profile = options.text("app_profile")
        if app_profile is not None and not _APP_PROFILE_ID.fullmatch(app_profile):
            raise StoreConfigError(
                f"{url}: option app_profile={app_profile!r} must be an app profile id (letters, digits, '-', '_', '.')"
            )
        emulator = options.text("emulator")
        if emulator is not None:
            match = _HOST_PORT.fullmatch(emulator)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise StoreConfigError(
                    f"{url}: option emulator={emulator!r} must be HOST:PORT of a Bigtable emulator, "
                    "e.g. emulator=127.0.0.1:8086"
                )
        return cls(
            project=url.host,
            instance=instance,
            table=table,
            app_profile=app_profile,
            # A timeout of 0 would make every call fail at once: at least a millisecond.
            timeout_s=options.optional_number("timeout", minimum=0.001),
            deadline_s=options.number("deadline", DEADLINE_S),
            emulator=emulator or environ.get(EMULATOR_ENV) or None,
        )

    def timeout(self, default: float) -> float:
        return self.timeout_s if self.timeout_s is not None else default

    @property
    def instance_path(self) -> str:
        return f"projects/{self.project}/instances/{self.instance}"

    @property
    def table_path(self) -> str:
        return f"{self.instance_path}/tables/{self.table}"
