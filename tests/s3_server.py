"""A real S3 API for tests: a moto server process on 127.0.0.1 (moto[server], in the test extra).

The server is started once per test session and stopped by PID at the end. Tests reach it through
the standard AWS variables only (AWS_ENDPOINT_URL + dummy keys), exactly as a user's job would reach a
real store, so the same variables must travel to Ray workers for anything to work.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


#: Variables a test run sets for the S3 client (dummy keys: moto accepts any).
def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-not-for-logs",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    pid: int

    @property
    def env(self) -> dict[str, str]:
        return aws_env(self.endpoint)

    def new_bucket(self, prefix: str = "t") -> str:
        """A fresh bucket (tests never share state through the store)."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=name)
        return name


@contextmanager
def moto_server(log_dir: Path) -> Iterator[S3Server]:
    """Start `moto_server` on a free loopback port, wait until it answers, stop it by PID afterwards."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOTO_PORT": str(port)})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()  # noqa: S310 - loopback
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (see {log_dir / 'moto.log'})") from None
                time.sleep(0.2)
        yield S3Server(endpoint, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
