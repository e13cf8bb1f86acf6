"""Google's Bigtable emulator (``cbtemulator``) on a free loopback port, and a fresh table per test.

The emulator keeps everything in memory (about 1.2 KiB a row), so each test's table is deleted when the
test ends. Clients find it through ``BIGTABLE_EMULATOR_HOST``, set for the session and restored after.

``bigtable_down_url`` (in ``DOWN_FIXTURES``) is a store whose emulator is not there: its URL names a
loopback port that refuses connections with the ``emulator=`` option, so it changes no environment
variable and the other Bigtable tests of the process keep their emulator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import free_port, missing, refusing_port, stop, wait_for_port

if TYPE_CHECKING:  # the adapter imports the Bigtable SDK, which a test run without it never needs
    from precompute.adapters.bigtable.options import Settings

STORE_FIXTURES = ["bigtable_store_url"]
DOWN_FIXTURES = ["bigtable_down_url"]

PROJECT = "test-project"
INSTANCE = "test-instance"
HINT = (
    "install the Google Cloud SDK component: apt-get install google-cloud-cli-bigtable-emulator "
    "(or gcloud components install bigtable)"
)
_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")


def find_emulator() -> str | None:
    candidates = [os.environ.get("CBTEMULATOR"), shutil.which("cbtemulator")]
    gcloud = shutil.which("gcloud")
    roots = list(_SDK_ROOTS)
    if gcloud:  # gcloud lives in <sdk>/bin, possibly behind a symlink
        roots.insert(0, str(Path(gcloud).resolve().parents[1]))
    candidates += [f"{root}/platform/bigtable-emulator/cbtemulator" for root in roots]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def bigtable_emulator() -> Iterator[str]:
    """The emulator's host:port, exported as BIGTABLE_EMULATOR_HOST for the session."""
    binary = find_emulator()
    if binary is None:
        missing("cbtemulator (the Bigtable emulator)", HINT)
        raise AssertionError("unreachable")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-host", "127.0.0.1", "-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    previous = os.environ.get("BIGTABLE_EMULATOR_HOST")
    try:
        wait_for_port(port, proc)
        host = f"127.0.0.1:{port}"
        os.environ["BIGTABLE_EMULATOR_HOST"] = host
        yield host
    finally:
        if previous is None:
            os.environ.pop("BIGTABLE_EMULATOR_HOST", None)
        else:
            os.environ["BIGTABLE_EMULATOR_HOST"] = previous
        stop(proc)


def drop_table(settings: Settings) -> None:
    from google.api_core import exceptions

    from precompute.adapters.bigtable.client import admin_client, close_admin

    admin = admin_client(settings)
    try:
        admin.delete_table(request={"name": settings.table_path})
    except exceptions.NotFound:
        pass
    finally:
        close_admin(admin)


@pytest.fixture
def bigtable_store_url(bigtable_emulator: str) -> Iterator[str]:
    """A store on a table of its own; the table (and the emulator memory it holds) goes after the test."""
    from precompute.adapters.bigtable.options import Settings
    from precompute.store import StoreURL

    url = f"bigtable://{PROJECT}/{INSTANCE}/t-{uuid.uuid4().hex[:16]}"
    # Where it lives, read now: a test may point BIGTABLE_EMULATOR_HOST elsewhere before this is undone.
    settings = Settings.from_url(StoreURL.parse(url))
    yield url
    drop_table(settings)


@pytest.fixture
def bigtable_down_url() -> Iterator[str]:
    """A store whose emulator is down: every call gives up within about 3 s.

    The port is bound and never listened on, so it refuses every connection for as long as the test
    runs (a port merely found free could be taken by another process meanwhile). ``timeout=1`` bounds
    each data call, client retries included; ``deadline=2`` bounds how long a bulk write resends.
    """
    try:
        import google.cloud.bigtable  # noqa: F401
    except ImportError:
        missing("google-cloud-bigtable", "pip install 'precompute[bigtable]'")
    with refusing_port() as port:
        yield f"bigtable://{PROJECT}/{INSTANCE}/down?emulator=127.0.0.1:{port}&timeout=1&deadline=2"
