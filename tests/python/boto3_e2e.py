"""Drives a running Cloister server the way OSCAR users do: boto3 against the embedded S3
endpoint, plain HTTP (as oscar-python sends it) against the REST API.

Environment: CLOISTER_API, CLOISTER_S3, CLOISTER_USER, CLOISTER_PASSWORD, S3_ACCESS_KEY,
S3_SECRET_KEY. Exits non-zero on the first failed check.
"""

import base64
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

API = os.environ["CLOISTER_API"]
AUTH = "Basic " + base64.b64encode(
    f"{os.environ['CLOISTER_USER']}:{os.environ['CLOISTER_PASSWORD']}".encode()
).decode()


def s3_client(secret=None):
    return boto3.client(
        "s3",
        endpoint_url=os.environ["CLOISTER_S3"],
        aws_access_key_id=os.environ["S3_ACCESS_KEY"],
        aws_secret_access_key=secret or os.environ["S3_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def api(method, path, body=None, auth=AUTH, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Authorization", auth)
    # oscar-python sends this header on every body, also for base64 /run bodies.
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main():
    s3 = s3_client()
    s3.create_bucket(Bucket="boto-bucket")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check("boto-bucket" in names, f"bucket not listed: {names}")

    s3.put_object(Bucket="boto-bucket", Key="dir/hello.txt", Body=b"hello boto3")
    got = s3.get_object(Bucket="boto-bucket", Key="dir/hello.txt")["Body"].read()
    check(got == b"hello boto3", f"get returned {got!r}")
    head = s3.head_object(Bucket="boto-bucket", Key="dir/hello.txt")
    check(head["ContentLength"] == 11, f"head: {head}")
    listed = s3.list_objects_v2(Bucket="boto-bucket", Prefix="dir/")
    check([o["Key"] for o in listed["Contents"]] == ["dir/hello.txt"], f"list: {listed}")

    # Multipart: 12 MiB in 5 MiB parts.
    blob = os.urandom(12 * 1024 * 1024)
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_fileobj(io.BytesIO(blob), "boto-bucket", "big/blob.bin", Config=cfg)
    out = io.BytesIO()
    s3.download_fileobj("boto-bucket", "big/blob.bin", out)
    check(hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(blob).digest(), "multipart round trip differs")
    etag = s3.head_object(Bucket="boto-bucket", Key="big/blob.bin")["ETag"]
    check(etag.strip('"').endswith("-3"), f"multipart ETag {etag}")

    s3.delete_object(Bucket="boto-bucket", Key="dir/hello.txt")
    try:
        s3.get_object(Bucket="boto-bucket", Key="dir/hello.txt")
        check(False, "deleted object still readable")
    except ClientError as err:
        check(err.response["Error"]["Code"] == "NoSuchKey", f"{err}")

    # Keys that look like paths are names like any other: stored and read back as themselves,
    # never resolved. Keys S3 cannot carry are refused, and so is a wrong secret.
    for key in ["a/../b", "a//b", "./x", "../../etc/passwd"]:
        s3.put_object(Bucket="boto-bucket", Key=key, Body=key.encode())
        got = s3.get_object(Bucket="boto-bucket", Key=key)["Body"].read()
        check(got == key.encode(), f"{key!r} read back as {got!r}")
        s3.delete_object(Bucket="boto-bucket", Key=key)
    for key in ["nul\x00byte", "k" * 1025]:
        try:
            s3.put_object(Bucket="boto-bucket", Key=key, Body=b"x")
            check(False, f"key {key[:20]!r} accepted")
        except ClientError as err:
            check(err.response["ResponseMetadata"]["HTTPStatusCode"] == 400, f"{key[:20]}: {err}")
    try:
        s3_client(secret="wrong-secret").list_buckets()
        check(False, "a wrong secret key was accepted")
    except ClientError as err:
        check(err.response["ResponseMetadata"]["HTTPStatusCode"] == 403, f"{err}")
    # S3 semantics: a non-empty bucket cannot be deleted.
    try:
        s3.delete_bucket(Bucket="boto-bucket")
        check(False, "non-empty bucket deleted")
    except ClientError as err:
        check(err.response["Error"]["Code"] == "BucketNotEmpty", f"{err}")

    # oscar-python's create_service: GET must be 404 first, then POST.
    status, _ = api("GET", "/system/services/boto-svc")
    check(status == 404, f"unknown service answered {status}")
    service = {
        "name": "boto-svc",
        "image": "ghcr.io/grycap/cowsay",
        "cpu": "0.5",
        "memory": "64Mi",
        "script": 'rev "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH").rev"',
        "input": [{"storage_provider": "minio.default", "path": "boto-svc/in"}],
        "output": [{"storage_provider": "minio.default", "path": "boto-svc/out"}],
    }
    status, body = api("POST", "/system/services", service)
    check(status == 201, f"create service: {status} {body!r}")
    status, body = api("GET", "/system/config/")
    check(status == 200, f"config/: {status}")
    provider = json.loads(body)["minio_provider"]
    check(provider["endpoint"] == os.environ["CLOISTER_S3"], f"minio_provider: {provider}")
    status, body = api("GET", "/system/services/boto-svc")
    svc = json.loads(body)
    check(svc["storage_providers"]["minio"]["default"]["access_key"] == os.environ["S3_ACCESS_KEY"], "providers")

    # Upload as oscar-python does: to bucket/<folder>/<file name>, with boto3.
    s3.put_object(Bucket="boto-svc", Key="in/line.txt", Body=b"abc\n")
    deadline = time.time() + 30
    while True:
        status, body = api("GET", "/system/logs/boto-svc?page=")
        jobs = json.loads(body)["jobs"]
        if any(j["status"] in ("Succeeded", "Failed") for j in jobs.values()):
            break
        check(time.time() < deadline, f"job did not finish: {jobs}")
        time.sleep(0.1)
    check([j["status"] for j in jobs.values()] == ["Succeeded"], f"jobs: {jobs}")
    out = s3.get_object(Bucket="boto-svc", Key="out/line.txt.rev")["Body"].read()
    check(out == b"cba\n", f"output {out!r}")

    # run_service: Bearer token, base64 body with a JSON content type; base64 answer.
    token = svc["token"]
    status, body = api("POST", "/run/boto-svc", auth=f"Bearer {token}", raw=base64.b64encode(b"xyz\n"))
    check(status == 200, f"/run: {status} {body!r}")
    check(base64.b64decode(body) == b"zyx\n", f"/run answer {body!r}")
    status, _ = api("POST", "/run/boto-svc", raw=base64.b64encode(b"xyz\n"))
    check(status == 401, f"/run with Basic answered {status}")

    # update_service keeps the token.
    service["memory"] = "128Mi"
    status, _ = api("PUT", "/system/services", service)
    check(status == 204, f"update: {status}")
    status, body = api("GET", "/system/services/boto-svc")
    check(json.loads(body)["token"] == token and json.loads(body)["memory"] == "128Mi", "update lost the token")
    print("boto3: 1 passed, 0 failed")


if __name__ == "__main__":
    main()
