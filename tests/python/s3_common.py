"""What the S3 conformance scripts share: clients for the endpoint under test, throw-away buckets,
checksums that botocore cannot compute without awscrt (CRC32C, CRC64NVME), and raw SigV4 requests
for what boto3 will not send (aws-chunked bodies over plain HTTP, OPTIONS preflights).

Environment: CLOISTER_S3 (endpoint URL), S3_ACCESS_KEY, S3_SECRET_KEY.
"""

import base64
import hashlib
import os
import re
import urllib.parse
import uuid
import zlib

import boto3
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT = os.environ.get("CLOISTER_S3", "http://127.0.0.1:9000").rstrip("/")
ACCESS_KEY = os.environ.get("S3_ACCESS_KEY", "")
SECRET_KEY = os.environ.get("S3_SECRET_KEY", "")
REGION = "us-east-1"
MIB = 1024 * 1024
# S3's smallest part that may be followed by another.
MIN_PART = 5 * MIB


def s3_client(secret=None, access=None, **config):
    """A boto3 client with path-style addressing and no retries (a retry would hide an error);
    SigV4 unless `signature_version` says otherwise."""
    signature_version = config.pop("signature_version", "s3v4")
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=access or ACCESS_KEY,
        aws_secret_access_key=secret or SECRET_KEY,
        region_name=REGION,
        config=Config(
            signature_version=signature_version,
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            **config,
        ),
    )


def new_bucket_name(tag="t"):
    """A fresh bucket name that says which test made it."""
    readable = re.sub(r"[^a-z0-9-]+", "-", tag.lower())[:24].strip("-") or "t"
    return f"{readable}-{uuid.uuid4().hex[:12]}"


def empty_and_delete_bucket(s3, bucket):
    """Best-effort cleanup: a failure here must not hide the test's own outcome."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for up in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    try:
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def error_of(call, what="the request"):
    """Runs `call`, which must fail; returns (HTTP status, error code, message, response)."""
    try:
        result = call()
    except ClientError as err:
        e = err.response.get("Error", {})
        return (
            err.response["ResponseMetadata"]["HTTPStatusCode"],
            e.get("Code"),
            e.get("Message"),
            err.response,
        )
    meta = result.get("ResponseMetadata", {}) if isinstance(result, dict) else {}
    raise AssertionError(f"{what}: expected an error, got HTTP {meta.get('HTTPStatusCode')} success")


def expect_error(call, status, code, what):
    """Asserts that `call` fails with `status` and `code`; `what` says what was sent."""
    got_status, got_code, message, response = error_of(call, what)
    assert (got_status, got_code) == (status, code), (
        f"{what}: expected {status} {code}, got {got_status} {got_code} ({message!r})"
    )
    return response


def headers_of(response):
    return response["ResponseMetadata"]["HTTPHeaders"]


def quote_key(key):
    return urllib.parse.quote(key, safe="/~")


def signed_request(method, path, headers=None, body=b"", query="", streaming_trailer=False):
    """Sends a SigV4-signed request that boto3 would not build; returns the `requests` response.

    `path` is the already-encoded path (`/bucket/key`). With `streaming_trailer` the payload hash
    is STREAMING-UNSIGNED-PAYLOAD-TRAILER, as boto3 >= 1.36 sends over TLS.
    """
    url = ENDPOINT + path + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if streaming_trailer:
        req.context["checksum"] = {"request_algorithm": {"in": "trailer"}}
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
    return requests.request(method, url, headers=dict(req.headers.items()), data=body, timeout=30)


def _crc_table(poly, width):
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc & ((1 << width) - 1))
    return table


_CRC32C_TABLE = _crc_table(0x82F63B78, 32)
_CRC64NVME_TABLE = _crc_table(0x9A6C9329AC4BC9B5, 64)


def _reflected_crc(data, table, width):
    mask = (1 << width) - 1
    crc = mask
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ mask


def crc32c(data):
    return _reflected_crc(data, _CRC32C_TABLE, 32)


def crc64nvme(data):
    return _reflected_crc(data, _CRC64NVME_TABLE, 64)


def checksum_b64(algorithm, data):
    """The base64 checksum value S3 sends in `x-amz-checksum-<algorithm>`."""
    algorithm = algorithm.upper()
    if algorithm == "CRC32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    elif algorithm == "CRC32C":
        raw = crc32c(data).to_bytes(4, "big")
    elif algorithm == "CRC64NVME":
        raw = crc64nvme(data).to_bytes(8, "big")
    elif algorithm == "SHA1":
        raw = hashlib.sha1(data).digest()
    elif algorithm == "SHA256":
        raw = hashlib.sha256(data).digest()
    else:
        raise ValueError(algorithm)
    return base64.b64encode(raw).decode()


# The published check values ("123456789") guard the hand-written CRCs above.
assert crc32c(b"123456789") == 0xE3069283
assert crc64nvme(b"123456789") == 0xAE8B14860A799888
