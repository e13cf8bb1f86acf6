"""A real S3 endpoint on loopback (moto's server), for model and table URIs (``s3://...``) read where they
are used, through ``pyarrow.fs``, with the same credentials from the environment as DynamoDB Local's."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, missing, stop, wait_for_port

HINT = "pip install 'moto[server]' (the dev extra)"


@dataclass(frozen=True)
class S3Server:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, bucket: str, path: str) -> str:
        """An ``s3://`` URI that pyarrow reads from this server."""
        return f"s3://{bucket}/{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def upload(self, bucket: str, prefix: str, folder: Path) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(file), bucket, f"{prefix}/{file.relative_to(folder)}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        missing("moto_server", HINT)
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
        try:
            wait_for_port(port, proc)
            yield S3Server(port)
        finally:
            stop(proc)
