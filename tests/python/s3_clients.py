"""Real S3 clients against Cloister's embedded endpoint (issue 12): rclone, s3cmd (SigV4 and
SigV2) and the AWS CLI sync a tree with nested folders and odd names up and down, and each
answer is compared with the tree.

    CLOISTER_S3=... S3_ACCESS_KEY=... S3_SECRET_KEY=... python3 -m pytest tests/python/s3_clients.py -q -rfEs

A missing tool skips its test, unless CLOISTER_REQUIRE_S3_CLIENTS=1 (CI), where it fails.
"""

import json
import os
import re
import shutil
import subprocess
import urllib.parse

import pytest
from botocore.exceptions import ClientError

from s3_common import ACCESS_KEY, ENDPOINT, MIB, SECRET_KEY, empty_and_delete_bucket, new_bucket_name, s3_client

REQUIRED = os.environ.get("CLOISTER_REQUIRE_S3_CLIENTS") == "1"

# Names that break path-mapping stores and careless encoders; one file large enough for multipart
# with the part sizes set below.
TREE = {
    "plain.txt": b"plain\n",
    "empty.txt": b"",
    "dir one/file with spaces.txt": b"spaces\n",
    "\u00fcn\u00efc\u00f6d\u00e9/na\u00efve caf\u00e9 \u540d\u524d.txt": "unicode \u00e9\n".encode(),
    "plus+sign/a+b=c.txt": b"plus\n",
    "percent%/100% sure%20.txt": b"percent\n",
    "nested/deep/er/x.bin": os.urandom(100_000),
    "nested/deep/big.bin": os.urandom(12 * MIB),
}
# Folder markers as consoles and s3fs write them (zero-byte keys ending in `/`).
MARKERS = ["empty folder/", "nested/"]


def require(tool):
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed (apt-get install -y rclone s3cmd awscli)"
    if REQUIRED:
        pytest.fail(message + " and CLOISTER_REQUIRE_S3_CLIENTS=1")
    pytest.skip(message)


def run(cmd, env=None, what=None):
    """Runs a client; a failure names the command and the client's last error line."""
    env = {**os.environ, **(env or {})}
    # The endpoint is plain HTTP on loopback; rclone's AWS SDK refuses a CA bundle it cannot use.
    env.pop("AWS_CA_BUNDLE", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise AssertionError(
            f"{what or ' '.join(cmd[:3])} exited {done.returncode}: {telling_line(lines)}\n" + "\n".join(lines[-30:])
        )
    return done.stdout


def telling_line(lines):
    """The line that best says why a client failed: a Python exception, then an ERROR line."""
    for pattern in (r"^[\w.]*(Error|Exception): ", r"^ERROR|Failed to|failed:", r"(?i)error|fail"):
        found = [line for line in lines if re.search(pattern, line)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


def write_tree(root):
    for rel, data in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_same_tree(got_root, what):
    got = read_tree(got_root)
    missing = sorted(set(TREE) - set(got))
    extra = sorted(set(got) - set(TREE))
    differ = sorted(k for k in set(TREE) & set(got) if TREE[k] != got[k])
    assert not (missing or extra or differ), f"{what}: missing {missing}, extra {extra}, different {differ}"


@pytest.fixture
def bucket_name():
    s3 = s3_client()
    name = new_bucket_name("clients")
    yield name
    empty_and_delete_bucket(s3, name)


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "src")


def put_markers(bucket):
    s3 = s3_client()
    for marker in MARKERS:
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")


def absent_keys(bucket):
    """The tree's keys that HEAD does not find: each client must upload every name unchanged."""
    s3 = s3_client()
    absent = []
    for key in sorted(TREE):
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError:
            absent.append(key)
    return absent


# ---------------------------------------------------------------------------------------------
# rclone


def rclone_env():
    return {
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_CLOISTER_TYPE": "s3",
        "RCLONE_CONFIG_CLOISTER_PROVIDER": "Other",
        "RCLONE_CONFIG_CLOISTER_ENDPOINT": ENDPOINT,
        "RCLONE_CONFIG_CLOISTER_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_CLOISTER_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_CLOISTER_REGION": "us-east-1",
        "RCLONE_CONFIG_CLOISTER_FORCE_PATH_STYLE": "true",
        # Multipart for big.bin, so that rclone's MD5 metadata for multipart objects is used too.
        "RCLONE_S3_UPLOAD_CUTOFF": "5M",
        "RCLONE_S3_CHUNK_SIZE": "5M",
        # A retry would hide the first error and slow the run down.
        "RCLONE_RETRIES": "1",
        "RCLONE_LOW_LEVEL_RETRIES": "1",
    }


def rclone(*args):
    return run([require("rclone"), *args], rclone_env(), what=f"rclone {args[0]}")


def test_rclone_sync_check_and_list(tree, bucket_name, tmp_path):
    remote = f"cloister:{bucket_name}"
    rclone("mkdir", remote)
    rclone("sync", str(tree), remote)
    rclone("check", "--checksum", str(tree), remote)
    files = sorted(rclone("lsf", "-R", "--files-only", remote).splitlines())
    assert files == sorted(TREE), f"rclone lsf -R --files-only: {files}"
    assert not absent_keys(bucket_name), f"keys missing after rclone sync: {absent_keys(bucket_name)}"
    down = tmp_path / "down"
    rclone("sync", remote, str(down))
    assert_same_tree(down, "rclone sync down")
    rclone("purge", remote)
    listing = rclone("lsjson", "--max-depth", "1", "cloister:")
    assert bucket_name not in listing, f"bucket still listed after rclone purge: {listing[:300]}"


def test_rclone_with_folder_markers(tree, bucket_name, tmp_path):
    remote = f"cloister:{bucket_name}"
    rclone("mkdir", remote)
    rclone("sync", str(tree), remote)
    put_markers(bucket_name)
    # rclone reads a marker as a directory, never as a file.
    files = sorted(rclone("lsf", "-R", "--files-only", remote).splitlines())
    assert files == sorted(TREE), f"rclone lsf -R --files-only with folder markers: {files}"
    rclone("check", "--checksum", str(tree), remote)
    down = tmp_path / "down"
    rclone("sync", remote, str(down))
    assert_same_tree(down, "rclone sync down with folder markers")


def test_rclone_lists_versions(tree, bucket_name):
    remote = f"cloister:{bucket_name}"
    rclone("mkdir", remote)
    rclone("copy", str(tree / "plain.txt"), remote)
    files = rclone("lsf", "--s3-versions", remote).splitlines()
    assert files == ["plain.txt"], f"rclone lsf --s3-versions (ListObjectVersions): {files}"


# ---------------------------------------------------------------------------------------------
# s3cmd


def s3cmd(tmp_path, *args, v2=False):
    config = tmp_path / "s3cmd.cfg"
    config.write_text(f"[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\n")
    host = urllib.parse.urlparse(ENDPOINT).netloc
    flags = ["-c", str(config), "--host", host, "--host-bucket", host, "--no-ssl", "--region", "US"]
    flags += ["--signature-v2"] if v2 else []
    # Multipart for big.bin (12 MiB).
    flags += ["--multipart-chunk-size-mb", "5"]
    return run([require("s3cmd"), *flags, *args], what=f"s3cmd{' --signature-v2' if v2 else ''} {args[0]}")


@pytest.mark.parametrize("signature", ["v4", "v2"])
def test_s3cmd_sync_up_and_down(tree, bucket_name, tmp_path, signature):
    v2 = signature == "v2"
    s3cmd(tmp_path, "mb", f"s3://{bucket_name}", v2=v2)
    s3cmd(tmp_path, "sync", f"{tree}/", f"s3://{bucket_name}/", v2=v2)
    assert not absent_keys(bucket_name), f"keys missing after s3cmd sync: {absent_keys(bucket_name)}"
    listing = s3cmd(tmp_path, "ls", "-r", f"s3://{bucket_name}", v2=v2)
    lines = [line for line in listing.splitlines() if "s3://" in line]
    assert len(lines) == len(TREE), f"s3cmd ls -r: {lines}"
    # A second sync must find nothing to do: it compares sizes and MD5s (ETags) from the listing.
    again = s3cmd(tmp_path, "sync", "--dry-run", f"{tree}/", f"s3://{bucket_name}/", v2=v2)
    uploads = [line.rsplit(" -> ", 1)[-1] for line in again.splitlines() if line.startswith("upload:")]
    assert not uploads, f"s3cmd sync of an unchanged tree would upload again: {uploads}"
    down = tmp_path / "down"
    down.mkdir()
    s3cmd(tmp_path, "sync", f"s3://{bucket_name}/", f"{down}/", v2=v2)
    assert_same_tree(down, f"s3cmd ({signature}) sync down")
    s3cmd(tmp_path, "del", "--recursive", "--force", f"s3://{bucket_name}", v2=v2)
    s3cmd(tmp_path, "rb", f"s3://{bucket_name}", v2=v2)


# ---------------------------------------------------------------------------------------------
# AWS CLI


def aws(tmp_path, *args):
    config = tmp_path / "aws.cfg"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        # The AWS CLI (botocore's `Expect: 100-continue` path) now and then waits out its read
        # timeout on a PUT whose answer the server logged as sent (seen with the s3s-fs store
        # too); its own retry gets through. Every other client here runs without retries.
        "AWS_MAX_ATTEMPTS": "3",
    }
    return run(
        [require("aws"), "--cli-read-timeout", "15", "--endpoint-url", ENDPOINT, *args],
        env,
        what=f"aws {' '.join(args[:2])}",
    )


def test_aws_cli_cp_sync_ls(tree, bucket_name, tmp_path):
    aws(tmp_path, "s3", "mb", f"s3://{bucket_name}")
    aws(tmp_path, "s3", "cp", str(tree / "plain.txt"), f"s3://{bucket_name}/single/plain.txt")
    aws(tmp_path, "s3", "rm", f"s3://{bucket_name}/single/plain.txt")
    aws(tmp_path, "s3", "sync", str(tree), f"s3://{bucket_name}/")
    assert not absent_keys(bucket_name), f"keys missing after aws s3 sync: {absent_keys(bucket_name)}"
    listing = aws(tmp_path, "s3", "ls", "--recursive", f"s3://{bucket_name}/")
    assert len(listing.splitlines()) == len(TREE), f"aws s3 ls --recursive: {listing.splitlines()}"
    again = aws(tmp_path, "s3", "sync", "--dryrun", str(tree), f"s3://{bucket_name}/")
    uploads = [line.rsplit(" to ", 1)[-1] for line in again.splitlines() if "upload:" in line]
    assert not uploads, f"aws s3 sync of an unchanged tree would upload again: {uploads}"
    down = tmp_path / "down"
    aws(tmp_path, "s3", "sync", f"s3://{bucket_name}/", str(down))
    assert_same_tree(down, "aws s3 sync down")
    big = tmp_path / "big.bin"
    aws(tmp_path, "s3", "cp", f"s3://{bucket_name}/nested/deep/big.bin", str(big))
    assert big.read_bytes() == TREE["nested/deep/big.bin"], "aws s3 cp of the multipart object differs"


def test_aws_cli_list_object_versions(tree, bucket_name, tmp_path):
    aws(tmp_path, "s3", "mb", f"s3://{bucket_name}")
    aws(tmp_path, "s3", "sync", str(tree), f"s3://{bucket_name}/")
    answer = json.loads(aws(tmp_path, "s3api", "list-object-versions", "--bucket", bucket_name) or "{}")
    versions = sorted((v["Key"], v["VersionId"], v["IsLatest"]) for v in answer.get("Versions", []))
    assert versions == [(k, "null", True) for k in sorted(TREE)], f"aws s3api list-object-versions: {versions}"


def test_aws_cli_rb_force_on_nested_keys(tree, bucket_name, tmp_path):
    aws(tmp_path, "s3", "mb", f"s3://{bucket_name}")
    aws(tmp_path, "s3", "sync", str(tree), f"s3://{bucket_name}/")
    put_markers(bucket_name)
    aws(tmp_path, "s3", "rb", "--force", f"s3://{bucket_name}")
    buckets = aws(tmp_path, "s3", "ls")
    assert bucket_name not in buckets, f"bucket still listed after aws s3 rb --force: {buckets.splitlines()}"


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-rfEs"]))
