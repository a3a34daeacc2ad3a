"""A real S3-compatible server for the tests (moto's standalone server, in a thread of the
test process, on a free port) and a fresh bucket per test, found by the product through
the standard AWS variables."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server; returns its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Bucket:
    name: str
    client: Any  # boto3's S3 client

    def objects(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def urls(self) -> list[str]:
        return [f"s3://{self.name}/{key}" for key in self.objects()]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def content_type(self, key: str) -> str:
        return self.client.head_object(Bucket=self.name, Key=key)["ContentType"]

    def versions(self) -> int:
        """Every version of every object, deleted ones included: a rewrite adds one."""
        found = self.client.list_object_versions(Bucket=self.name)
        return len(found.get("Versions", [])) + len(found.get("DeleteMarkers", []))


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, tmp_path) -> Bucket:
    """A fresh, versioned bucket on the S3 server; the AWS variables point at it (fake
    credentials, no profile or config file of the machine's)."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "BILLING_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    client = boto3.client("s3", endpoint_url=s3_server)
    name = "billing-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return Bucket(name, client)
