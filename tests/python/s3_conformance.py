"""S3 conformance of Cloister's embedded endpoint, checked against what AWS S3 answers (issue 12).

One test per behaviour, each in a bucket of its own. Run with
    CLOISTER_S3=http://127.0.0.1:PORT S3_ACCESS_KEY=... S3_SECRET_KEY=... \
        python3 -m pytest tests/python/s3_conformance.py -q -rfE
(crates/cli/tests/s3_conformance.rs starts a server and does this). Failure messages say what
was sent, what S3 answers and what came back.
"""

import base64
import datetime
import hashlib
import io
import os
import urllib.parse
import xml.etree.ElementTree as ET

import botocore
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, FlexibleChecksumError

from s3_common import (
    ENDPOINT,
    MIN_PART,
    checksum_b64,
    empty_and_delete_bucket,
    error_of,
    expect_error,
    headers_of,
    new_bucket_name,
    quote_key,
    s3_client,
    signed_request,
)


@pytest.fixture(scope="session")
def s3():
    return s3_client()


@pytest.fixture
def bucket(s3, request):
    name = new_bucket_name(request.node.name.removeprefix("test_"))
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def put(s3, bucket, key, body=b"x", **kw):
    return s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)


def body_of(s3, bucket, key, **kw):
    return s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


def all_keys_v2(s3, bucket, **kw):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kw):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def raw_listing(s3, operation, **params):
    """The XML body of a listing as the server sent it (boto3 url-decodes keys on its own)."""
    captured = {}

    def keep(response_dict, **_):
        captured["body"] = response_dict["body"]

    event = f"before-parse.s3.{operation}"
    s3.meta.events.register(event, keep)
    try:
        getattr(s3, {"ListObjects": "list_objects", "ListObjectsV2": "list_objects_v2"}[operation])(**params)
    finally:
        s3.meta.events.unregister(event, keep)
    root = ET.fromstring(captured["body"])
    ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
    return root, ns


def multipart(s3, bucket, key, parts, **create):
    """Uploads `parts` (list of bytes) as parts 1..N; returns (upload id, [{PartNumber, ETag}])."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    return upload, done


def complete(s3, bucket, key, upload, parts):
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def two_part_body():
    return os.urandom(MIN_PART), os.urandom(1000)


# ---------------------------------------------------------------------------------------------
# Any valid key works: keys are names, not paths.


def test_folder_marker_with_zero_bytes(s3, bucket):
    put(s3, bucket, "dir/", b"")
    head = s3.head_object(Bucket=bucket, Key="dir/")
    assert head["ContentLength"] == 0, f"HEAD dir/ after PUT of 0 bytes: ContentLength {head['ContentLength']}"
    assert all_keys_v2(s3, bucket) == ["dir/"], f"listing after PUT dir/: {all_keys_v2(s3, bucket)}"


def test_folder_marker_beside_objects_below_it(s3, bucket):
    put(s3, bucket, "dir/", b"")
    put(s3, bucket, "dir/file", b"f")
    assert all_keys_v2(s3, bucket) == ["dir/", "dir/file"], f"listing: {all_keys_v2(s3, bucket)}"
    assert body_of(s3, bucket, "dir/") == b""


def test_key_beside_key_below_it(s3, bucket):
    put(s3, bucket, "a", b"A")
    put(s3, bucket, "a/b", b"AB")
    got = (body_of(s3, bucket, "a"), body_of(s3, bucket, "a/b"))
    assert got == (b"A", b"AB"), f"PUT a then a/b; GET both gave {got}"


def test_key_below_existing_key(s3, bucket):
    put(s3, bucket, "foo/bar", b"1")
    put(s3, bucket, "foo/bar/x", b"2")
    got = (body_of(s3, bucket, "foo/bar"), body_of(s3, bucket, "foo/bar/x"))
    assert got == (b"1", b"2"), f"PUT foo/bar then foo/bar/x; GET both gave {got}"


def test_key_after_folder_marker_of_same_name(s3, bucket):
    put(s3, bucket, "foo/", b"")
    put(s3, bucket, "foo", b"file")
    got = (body_of(s3, bucket, "foo/"), body_of(s3, bucket, "foo"))
    assert got == (b"", b"file"), f"PUT foo/ then foo; GET both gave {got}"


@pytest.mark.parametrize(
    "key",
    ["//", "a//b", "/leading", "trailing//", ".", "..", "./x", "a/./b", "a/../b", "../escape", "a/.."],
)
def test_dot_and_slash_keys(s3, bucket, key):
    put(s3, bucket, key, key.encode())
    assert body_of(s3, bucket, key) == key.encode(), f"GET {key!r} after PUT returned another body"
    assert all_keys_v2(s3, bucket) == [key], f"PUT {key!r}; listing {all_keys_v2(s3, bucket)}"


@pytest.mark.parametrize(
    "key",
    ["ünïcödé/名前.txt", "with space/and more.txt", "plus+sign", "percent%25and%", "mixed %2F+ é?#&=;"],
)
def test_unusual_characters_in_keys(s3, bucket, key):
    put(s3, bucket, key, b"v")
    assert body_of(s3, bucket, key) == b"v", f"GET {key!r} after PUT"
    assert all_keys_v2(s3, bucket) == [key], f"PUT {key!r}; listing {all_keys_v2(s3, bucket)}"


def test_prefix_slash_lists_only_keys_starting_with_slash(s3, bucket):
    for key in ["/root", "a/b", "c"]:
        put(s3, bucket, key)
    got = all_keys_v2(s3, bucket, Prefix="/")
    assert got == ["/root"], f"keys /root a/b c, Prefix='/': expected ['/root'], got {got}"


def test_delete_of_nested_keys_leaves_bucket_deletable(s3):
    name = new_bucket_name("nested-delete")
    s3.create_bucket(Bucket=name)
    try:
        for key in ["a/b/c/d.txt", "a/b/e.txt", "x/y/"]:
            put(s3, name, key, b"" if key.endswith("/") else b"1")
        for key in ["a/b/c/d.txt", "a/b/e.txt", "x/y/"]:
            s3.delete_object(Bucket=name, Key=key)
        listing = s3.list_objects_v2(Bucket=name, Delimiter="/")
        assert "Contents" not in listing and "CommonPrefixes" not in listing, f"listing after deletes: {listing}"
        try:
            s3.delete_bucket(Bucket=name)
        except ClientError as err:
            raise AssertionError(f"DeleteBucket after deleting every nested key: {err}") from None
    finally:
        empty_and_delete_bucket(s3, name)


# ---------------------------------------------------------------------------------------------
# Listings.


def test_list_v1_has_etag_size_storage_class_owner(s3, bucket):
    etag = put(s3, bucket, "k", b"hello")["ETag"]
    obj = s3.list_objects(Bucket=bucket)["Contents"][0]
    missing = [f for f in ("ETag", "Size", "StorageClass", "Owner", "LastModified") if f not in obj]
    assert not missing, f"ListObjects entry lacks {missing}: {obj}"
    assert (obj["ETag"], obj["Size"], obj["StorageClass"]) == (etag, 5, "STANDARD"), f"entry {obj}"
    assert obj["Owner"].get("ID"), f"Owner without ID: {obj['Owner']}"


def test_list_v2_has_etag_size_storage_class(s3, bucket):
    etag = put(s3, bucket, "k", b"hello")["ETag"]
    obj = s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    got = (obj.get("ETag"), obj.get("Size"), obj.get("StorageClass"))
    assert got == (etag, 5, "STANDARD"), f"ListObjectsV2 entry: expected {(etag, 5, 'STANDARD')}, got {got}"


def test_list_v2_owner_only_with_fetch_owner(s3, bucket):
    put(s3, bucket, "k")
    plain = s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    owned = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0]
    assert "Owner" not in plain, f"ListObjectsV2 without fetch-owner has Owner: {plain}"
    assert owned.get("Owner", {}).get("ID"), f"ListObjectsV2 fetch-owner=true: no Owner ID in {owned}"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_list_delimiter_common_prefixes(s3, bucket, version):
    for key in ["a/1", "a/2", "b/c/3", "top", "a/"]:
        put(s3, bucket, key)
    call = s3.list_objects if version == "v1" else s3.list_objects_v2
    got = call(Bucket=bucket, Delimiter="/")
    keys = [o["Key"] for o in got.get("Contents", [])]
    prefixes = [p["Prefix"] for p in got.get("CommonPrefixes", [])]
    assert (keys, prefixes) == (["top"], ["a/", "b/"]), f"Delimiter='/': keys {keys}, prefixes {prefixes}"
    inner = call(Bucket=bucket, Prefix="a/", Delimiter="/")
    keys = [o["Key"] for o in inner.get("Contents", [])]
    assert keys == ["a/", "a/1", "a/2"], f"Prefix='a/' Delimiter='/': keys {keys}"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_list_empty_delimiter_means_no_delimiter(s3, bucket, version):
    for key in ["a/1", "b/c/2", "top"]:
        put(s3, bucket, key)
    call = s3.list_objects if version == "v1" else s3.list_objects_v2
    got = call(Bucket=bucket, Delimiter="")
    keys = [o["Key"] for o in got.get("Contents", [])]
    assert keys == ["a/1", "b/c/2", "top"] and not got.get("CommonPrefixes"), (
        f"delimiter= (empty) must list every key: keys {keys}, prefixes {got.get('CommonPrefixes')}"
    )


def test_list_v1_marker_echoed(s3, bucket):
    for key in ["a", "b", "c"]:
        put(s3, bucket, key)
    got = s3.list_objects(Bucket=bucket, Marker="a")
    assert got.get("Marker") == "a", f"ListObjects marker=a: Marker in answer {got.get('Marker')!r}"
    keys = [o["Key"] for o in got.get("Contents", [])]
    assert keys == ["b", "c"], f"marker=a: keys {keys}"


def test_list_v1_next_marker_with_delimiter(s3, bucket):
    for key in ["a/1", "b/2", "c/3", "d"]:
        put(s3, bucket, key)
    got = s3.list_objects(Bucket=bucket, Delimiter="/", MaxKeys=2)
    assert got.get("IsTruncated") is True, f"4 entries, max-keys=2: IsTruncated {got.get('IsTruncated')}"
    assert got.get("NextMarker") == "b/", f"max-keys=2 delimiter=/: NextMarker {got.get('NextMarker')!r}"
    rest = s3.list_objects(Bucket=bucket, Delimiter="/", Marker=got["NextMarker"])
    seen = [p["Prefix"] for p in rest.get("CommonPrefixes", [])] + [o["Key"] for o in rest.get("Contents", [])]
    assert sorted(seen) == ["c/", "d"], f"page after NextMarker b/: {seen}"


def test_list_v1_max_keys_and_is_truncated(s3, bucket):
    keys = [f"k{i:02}" for i in range(7)]
    for key in keys:
        put(s3, bucket, key)
    seen, marker, pages = [], "", 0
    while True:
        page = s3.list_objects(Bucket=bucket, MaxKeys=3, Marker=marker)
        batch = [o["Key"] for o in page.get("Contents", [])]
        assert len(batch) <= 3, f"max-keys=3 answered {len(batch)} keys"
        seen += batch
        pages += 1
        if not page.get("IsTruncated"):
            break
        marker = page.get("NextMarker") or batch[-1]
        assert pages < 10, "ListObjects pagination does not end"
    assert (seen, pages) == (keys, 3), f"7 keys in pages of 3: got {seen} in {pages} pages"


def test_list_v2_max_keys_and_continuation_token(s3, bucket):
    keys = [f"k{i:02}" for i in range(7)]
    for key in keys:
        put(s3, bucket, key)
    seen, token, pages = [], None, 0
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=3, **kw)
        batch = [o["Key"] for o in page.get("Contents", [])]
        assert page.get("KeyCount") == len(batch), f"KeyCount {page.get('KeyCount')} for {len(batch)} keys"
        seen += batch
        pages += 1
        if not page.get("IsTruncated"):
            break
        token = page.get("NextContinuationToken")
        assert token, f"IsTruncated without NextContinuationToken: {page}"
        assert pages < 10, "ListObjectsV2 pagination does not end"
    assert (seen, pages) == (keys, 3), f"7 keys in pages of 3: got {seen} in {pages} pages"


def test_list_v2_start_after(s3, bucket):
    for key in ["a", "b", "c"]:
        put(s3, bucket, key)
    got = s3.list_objects_v2(Bucket=bucket, StartAfter="a")
    keys = [o["Key"] for o in got.get("Contents", [])]
    assert keys == ["b", "c"] and got.get("StartAfter") == "a", (
        f"start-after=a: keys {keys}, StartAfter echoed {got.get('StartAfter')!r}"
    )


@pytest.mark.parametrize("operation", ["ListObjects", "ListObjectsV2"])
def test_list_encoding_type_url_encodes_keys(s3, bucket, operation):
    key = "sp ace/ü+%&<x>"
    put(s3, bucket, key)
    root, ns = raw_listing(s3, operation, Bucket=bucket, EncodingType="url")
    raw_keys = [k.text for k in root.iter(f"{ns}Key")]
    encoding = root.find(f"{ns}EncodingType")
    assert encoding is not None and encoding.text == "url", "encoding-type=url not echoed"
    assert raw_keys and raw_keys[0] != key and urllib.parse.unquote(raw_keys[0]) == key, (
        f"encoding-type=url: raw <Key> {raw_keys} should be the URL encoding of {key!r}"
    )


def test_list_encoding_type_url_encodes_common_prefixes(s3, bucket):
    put(s3, bucket, "dir with space/x")
    root, ns = raw_listing(s3, "ListObjectsV2", Bucket=bucket, Delimiter="/", EncodingType="url")
    prefixes = [p.text for p in root.iter(f"{ns}Prefix") if p.text]
    assert "dir%20with%20space/" in prefixes, f"encoding-type=url: raw prefixes {prefixes}"


def test_list_buckets_lists_created_bucket_with_owner(s3, bucket):
    got = s3.list_buckets()
    names = [b["Name"] for b in got["Buckets"]]
    assert bucket in names, f"ListBuckets after CreateBucket {bucket}: {names}"
    assert got.get("Owner", {}).get("ID"), f"ListBuckets without Owner ID: {got.get('Owner')}"


def test_list_buckets_max_buckets_and_continuation(s3):
    names = sorted(new_bucket_name("maxb") for _ in range(3))
    for name in names:
        s3.create_bucket(Bucket=name)
    try:
        total = len(s3.list_buckets()["Buckets"])
        seen, token, pages = [], None, 0
        while True:
            kw = {"ContinuationToken": token} if token else {}
            page = s3.list_buckets(MaxBuckets=1, **kw)
            assert len(page["Buckets"]) <= 1, f"max-buckets=1 answered {len(page['Buckets'])} buckets"
            seen += [b["Name"] for b in page["Buckets"]]
            pages += 1
            token = page.get("ContinuationToken")
            if not token or pages > total + 2:
                break
        assert len(seen) == total and pages >= total, f"max-buckets=1: {pages} pages, {len(seen)}/{total}"
    finally:
        for name in names:
            empty_and_delete_bucket(s3, name)


# ---------------------------------------------------------------------------------------------
# Multipart uploads.


def test_multipart_etag_is_md5_of_part_md5s(s3, bucket):
    first, last = two_part_body()
    upload, parts = multipart(s3, bucket, "mp", [first, last])
    done = complete(s3, bucket, "mp", upload, parts)
    expected = '"%s-2"' % hashlib.md5(hashlib.md5(first).digest() + hashlib.md5(last).digest()).hexdigest()
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert (done["ETag"], head["ETag"]) == (expected, expected), (
        f"2-part upload: expected ETag {expected}, Complete said {done['ETag']}, HEAD {head['ETag']}"
    )
    assert body_of(s3, bucket, "mp") == first + last, "multipart body differs from its parts"


def test_multipart_part_etag_is_md5_of_part(s3, bucket):
    data = b"part body"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=data)["ETag"]
    assert etag == f'"{md5_hex(data)}"', f"UploadPart ETag {etag}, expected md5 of the part"


def test_multipart_wrong_part_etag_is_invalid_part(s3, bucket):
    upload, parts = multipart(s3, bucket, "mp", [b"only part"])
    parts[0]["ETag"] = '"00000000000000000000000000000000"'
    expect_error(
        lambda: complete(s3, bucket, "mp", upload, parts), 400, "InvalidPart", "Complete with a wrong part ETag"
    )


def test_multipart_never_uploaded_part_is_invalid_part(s3, bucket):
    upload, parts = multipart(s3, bucket, "mp", [os.urandom(MIN_PART)])
    parts.append({"PartNumber": 2, "ETag": f'"{md5_hex(b"never sent")}"'})
    expect_error(
        lambda: complete(s3, bucket, "mp", upload, parts), 400, "InvalidPart", "Complete naming part 2 never uploaded"
    )


def test_multipart_parts_out_of_order_is_invalid_part_order(s3, bucket):
    # Both parts are large enough to come first, so only the order is wrong.
    upload, parts = multipart(s3, bucket, "mp", [os.urandom(MIN_PART), os.urandom(MIN_PART)])
    expect_error(
        lambda: complete(s3, bucket, "mp", upload, list(reversed(parts))),
        400,
        "InvalidPartOrder",
        "Complete listing parts 2, 1",
    )


def test_multipart_small_non_last_part_is_entity_too_small(s3, bucket):
    upload, parts = multipart(s3, bucket, "mp", [b"small first part", b"last"])
    expect_error(
        lambda: complete(s3, bucket, "mp", upload, parts), 400, "EntityTooSmall", "Complete with a 16-byte part 1 of 2"
    )


def test_multipart_failed_complete_keeps_parts_and_retry_succeeds(s3, bucket):
    first, last = two_part_body()
    upload, parts = multipart(s3, bucket, "mp", [first, last])
    wrong = [dict(parts[0]), {"PartNumber": 2, "ETag": '"00000000000000000000000000000000"'}]
    error_of(lambda: complete(s3, bucket, "mp", upload, wrong), "Complete with a wrong ETag for part 2")
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload).get("Parts", [])
    assert [p["PartNumber"] for p in listed] == [1, 2], f"parts after a failed Complete: {listed}"
    try:
        complete(s3, bucket, "mp", upload, parts)
    except ClientError as err:
        raise AssertionError(f"correct Complete after a failed one: {err}") from None
    assert body_of(s3, bucket, "mp") == first + last, "body after retried Complete differs"


@pytest.mark.parametrize("operation", ["UploadPart", "ListParts", "CompleteMultipartUpload", "AbortMultipartUpload"])
def test_multipart_unknown_upload_id_is_no_such_upload(s3, bucket, operation):
    upload = "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA" + "x" * 8
    calls = {
        "UploadPart": lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x"),
        "ListParts": lambda: s3.list_parts(Bucket=bucket, Key="k", UploadId=upload),
        "CompleteMultipartUpload": lambda: complete(
            s3, bucket, "k", upload, [{"PartNumber": 1, "ETag": f'"{md5_hex(b"x")}"'}]
        ),
        "AbortMultipartUpload": lambda: s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload),
    }
    expect_error(calls[operation], 404, "NoSuchUpload", f"{operation} with an unknown upload id")


def test_multipart_abort_removes_upload(s3, bucket):
    upload, _ = multipart(s3, bucket, "mp", [b"x"])
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    expect_error(
        lambda: s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload), 404, "NoSuchUpload", "ListParts after Abort"
    )
    pending = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert pending == [], f"ListMultipartUploads after Abort: {pending}"
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="mp"), 404, "404", "HEAD of an aborted upload's key")


def test_list_multipart_uploads_lists_pending_uploads(s3, bucket):
    a = s3.create_multipart_upload(Bucket=bucket, Key="up/a")["UploadId"]
    b = s3.create_multipart_upload(Bucket=bucket, Key="up/b")["UploadId"]
    s3.create_multipart_upload(Bucket=bucket, Key="other")
    got = s3.list_multipart_uploads(Bucket=bucket, Prefix="up/")
    listed = sorted((u["Key"], u["UploadId"]) for u in got.get("Uploads", []))
    assert listed == sorted([("up/a", a), ("up/b", b)]), f"ListMultipartUploads prefix=up/: {listed}"


def test_list_parts_lists_uploaded_parts(s3, bucket):
    upload, parts = multipart(s3, bucket, "mp", [b"one", b"two!", b"three"])
    got = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)
    listed = [(p.get("PartNumber"), p.get("ETag"), p.get("Size")) for p in got.get("Parts", [])]
    expected = [(p["PartNumber"], p["ETag"], n) for p, n in zip(parts, [3, 4, 5])]
    assert listed == expected, f"ListParts: expected {expected}, got {listed}"
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload, MaxParts=1)
    assert page.get("IsTruncated") is True and page.get("NextPartNumberMarker") == 1, (
        f"ListParts max-parts=1: IsTruncated {page.get('IsTruncated')}, NextPartNumberMarker "
        f"{page.get('NextPartNumberMarker')}"
    )


def test_get_object_attributes(s3, bucket):
    first, last = two_part_body()
    # With part checksums S3 always reports ObjectParts.
    upload, parts = multipart(s3, bucket, "mp", [first, last], ChecksumAlgorithm="CRC32")
    for part, data in zip(parts, [first, last]):
        part["ChecksumCRC32"] = checksum_b64("CRC32", data)
    etag = complete(s3, bucket, "mp", upload, parts)["ETag"]
    got = s3.get_object_attributes(
        Bucket=bucket, Key="mp", ObjectAttributes=["ETag", "ObjectSize", "StorageClass", "ObjectParts"]
    )
    summary = (got.get("ETag", "").strip('"'), got.get("ObjectSize"), got.get("StorageClass"))
    assert summary == (etag.strip('"'), len(first) + len(last), "STANDARD"), f"GetObjectAttributes: {got}"
    assert got.get("ObjectParts", {}).get("TotalPartsCount") == 2, f"ObjectParts: {got.get('ObjectParts')}"


def test_get_part_number_returns_that_part(s3, bucket):
    first, last = two_part_body()
    upload, parts = multipart(s3, bucket, "mp", [first, last])
    complete(s3, bucket, "mp", upload, parts)
    got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    body = got["Body"].read()
    assert body == last, f"GET partNumber=2: {len(body)} bytes, expected part 2 ({len(last)} bytes)"
    assert got.get("PartsCount") == 2, f"GET partNumber=2: x-amz-mp-parts-count {got.get('PartsCount')}"
    total = len(first) + len(last)
    expected_range = f"bytes {len(first)}-{total - 1}/{total}"
    assert got.get("ContentRange") == expected_range, f"Content-Range {got.get('ContentRange')}"


# ---------------------------------------------------------------------------------------------
# Conditional requests.


def last_modified(s3, bucket, key):
    return s3.head_object(Bucket=bucket, Key=key)["LastModified"]


def test_get_if_match_mismatch_is_precondition_failed(s3, bucket):
    put(s3, bucket, "k", b"v")
    expect_error(
        lambda: s3.get_object(Bucket=bucket, Key="k", IfMatch='"0123"'), 412, "PreconditionFailed", "GET If-Match other"
    )


def test_get_if_match_match_is_ok(s3, bucket):
    etag = put(s3, bucket, "k", b"v")["ETag"]
    assert body_of(s3, bucket, "k", IfMatch=etag) == b"v"


def test_get_if_none_match_match_is_not_modified(s3, bucket):
    etag = put(s3, bucket, "k", b"v")["ETag"]
    expect_error(lambda: s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=etag), 304, "304", "GET If-None-Match")


def test_head_if_none_match_match_is_not_modified(s3, bucket):
    etag = put(s3, bucket, "k", b"v")["ETag"]
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="k", IfNoneMatch=etag), 304, "304", "HEAD If-None-Match")


def test_head_if_match_mismatch_is_precondition_failed(s3, bucket):
    put(s3, bucket, "k", b"v")
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="k", IfMatch='"0123"'), 412, "412", "HEAD If-Match other")


def test_get_if_modified_since_not_modified(s3, bucket):
    put(s3, bucket, "k", b"v")
    since = last_modified(s3, bucket, "k")
    expect_error(
        lambda: s3.get_object(Bucket=bucket, Key="k", IfModifiedSince=since),
        304,
        "304",
        f"GET If-Modified-Since {since} (= Last-Modified)",
    )


def test_get_if_modified_since_earlier_is_ok(s3, bucket):
    put(s3, bucket, "k", b"v")
    since = last_modified(s3, bucket, "k") - datetime.timedelta(days=1)
    assert body_of(s3, bucket, "k", IfModifiedSince=since) == b"v"


def test_get_if_unmodified_since_earlier_is_precondition_failed(s3, bucket):
    put(s3, bucket, "k", b"v")
    since = last_modified(s3, bucket, "k") - datetime.timedelta(days=1)
    expect_error(
        lambda: s3.get_object(Bucket=bucket, Key="k", IfUnmodifiedSince=since),
        412,
        "PreconditionFailed",
        "GET If-Unmodified-Since a day before Last-Modified",
    )


def test_get_if_match_true_overrides_if_unmodified_since_false(s3, bucket):
    etag = put(s3, bucket, "k", b"v")["ETag"]
    since = last_modified(s3, bucket, "k") - datetime.timedelta(days=1)
    assert body_of(s3, bucket, "k", IfMatch=etag, IfUnmodifiedSince=since) == b"v"


def test_ranged_get_with_if_match_mismatch_is_precondition_failed(s3, bucket):
    # s3transfer sends If-Match on every ranged part of a download.
    put(s3, bucket, "k", b"0123456789")
    expect_error(
        lambda: s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-3", IfMatch='"0123"'),
        412,
        "PreconditionFailed",
        "ranged GET with If-Match other",
    )


def test_put_if_none_match_star_on_existing_key_is_precondition_failed(s3, bucket):
    put(s3, bucket, "k", b"first")
    expect_error(
        lambda: put(s3, bucket, "k", b"second", IfNoneMatch="*"), 412, "PreconditionFailed", "PUT If-None-Match: *"
    )
    assert body_of(s3, bucket, "k") == b"first", "a refused conditional PUT changed the object"


def test_put_if_none_match_star_on_new_key_creates_it(s3, bucket):
    put(s3, bucket, "k", b"new", IfNoneMatch="*")
    assert body_of(s3, bucket, "k") == b"new"


def test_put_if_match(s3, bucket):
    etag = put(s3, bucket, "k", b"first")["ETag"]
    expect_error(
        lambda: put(s3, bucket, "k", b"x", IfMatch='"0123"'), 412, "PreconditionFailed", "PUT If-Match other ETag"
    )
    put(s3, bucket, "k", b"second", IfMatch=etag)
    assert body_of(s3, bucket, "k") == b"second", "PUT If-Match current ETag did not replace the object"


def test_complete_multipart_if_none_match_star_on_existing_key(s3, bucket):
    put(s3, bucket, "k", b"first")
    upload, parts = multipart(s3, bucket, "k", [b"second"])
    expect_error(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        ),
        412,
        "PreconditionFailed",
        "CompleteMultipartUpload If-None-Match: * on an existing key",
    )


def test_delete_if_match_mismatch_is_precondition_failed(s3, bucket):
    put(s3, bucket, "k", b"v")
    expect_error(
        lambda: s3.delete_object(Bucket=bucket, Key="k", IfMatch='"0123"'), 412, "PreconditionFailed", "DELETE If-Match"
    )
    assert body_of(s3, bucket, "k") == b"v", "a refused conditional DELETE removed the object"


# ---------------------------------------------------------------------------------------------
# Range GETs.


def test_range_first_bytes(s3, bucket):
    put(s3, bucket, "k", b"0123456789abcdef")
    got = s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-9")
    status = got["ResponseMetadata"]["HTTPStatusCode"]
    assert (status, got["Body"].read(), got.get("ContentRange")) == (206, b"0123456789", "bytes 0-9/16"), (
        f"Range bytes=0-9 of 16 bytes: {status} {got.get('ContentRange')}"
    )


def test_range_suffix(s3, bucket):
    put(s3, bucket, "k", b"0123456789abcdef")
    got = s3.get_object(Bucket=bucket, Key="k", Range="bytes=-5")
    body = got["Body"].read()
    assert (body, got.get("ContentRange")) == (b"bcdef", "bytes 11-15/16"), f"bytes=-5: {body!r} {got.get('ContentRange')}"


def test_range_open_ended(s3, bucket):
    put(s3, bucket, "k", b"0123456789abcdef")
    got = s3.get_object(Bucket=bucket, Key="k", Range="bytes=5-")
    body = got["Body"].read()
    assert (body, got.get("ContentRange")) == (b"56789abcdef", "bytes 5-15/16"), f"bytes=5-: {body!r}"


def test_range_not_satisfiable_is_invalid_range(s3, bucket):
    put(s3, bucket, "k", b"0123456789")
    expect_error(
        lambda: s3.get_object(Bucket=bucket, Key="k", Range="bytes=100-200"),
        416,
        "InvalidRange",
        "Range bytes=100-200 of a 10-byte object",
    )


def test_accept_ranges_bytes(s3, bucket):
    put(s3, bucket, "k", b"v")
    for name, answer in [("GET", s3.get_object(Bucket=bucket, Key="k")), ("HEAD", s3.head_object(Bucket=bucket, Key="k"))]:
        value = headers_of(answer).get("accept-ranges")
        assert value == "bytes", f"{name}: Accept-Ranges {value!r}, expected 'bytes'"


# ---------------------------------------------------------------------------------------------
# Copy.


def test_copy_metadata_directive_copy_keeps_metadata(s3, bucket):
    src = put(s3, bucket, "src", b"body", Metadata={"colour": "blue"}, ContentType="text/plain")
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    head = s3.head_object(Bucket=bucket, Key="dst")
    got = (head["Metadata"], head["ContentType"], copied["CopyObjectResult"]["ETag"])
    assert got == ({"colour": "blue"}, "text/plain", src["ETag"]), f"COPY directive: metadata, type, ETag {got}"


def test_copy_metadata_directive_replace(s3, bucket):
    put(s3, bucket, "src", b"body", Metadata={"colour": "blue"}, ContentType="text/plain")
    s3.copy_object(
        Bucket=bucket,
        Key="dst",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"shape": "round"},
        ContentType="application/json",
    )
    head = s3.head_object(Bucket=bucket, Key="dst")
    got = (head["Metadata"], head["ContentType"])
    assert got == ({"shape": "round"}, "application/json"), f"REPLACE directive: metadata and type {got}"
    assert body_of(s3, bucket, "dst") == b"body"


def test_copy_onto_itself_without_changes_is_invalid_request(s3, bucket):
    put(s3, bucket, "k", b"v")
    expect_error(
        lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}),
        400,
        "InvalidRequest",
        "CopyObject onto itself with MetadataDirective COPY",
    )


def test_copy_source_if_match_mismatch_is_precondition_failed(s3, bucket):
    put(s3, bucket, "src", b"v")
    expect_error(
        lambda: s3.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch='"0123"'
        ),
        412,
        "PreconditionFailed",
        "CopyObject x-amz-copy-source-if-match other",
    )


def test_copy_source_if_none_match_match_is_precondition_failed(s3, bucket):
    etag = put(s3, bucket, "src", b"v")["ETag"]
    expect_error(
        lambda: s3.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfNoneMatch=etag
        ),
        412,
        "PreconditionFailed",
        "CopyObject x-amz-copy-source-if-none-match current ETag",
    )


def test_copy_source_if_match_match_copies(s3, bucket):
    etag = put(s3, bucket, "src", b"v")["ETag"]
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag)
    assert body_of(s3, bucket, "dst") == b"v"


def test_copy_of_key_with_special_characters(s3, bucket):
    put(s3, bucket, "sp ace/ü+%", b"v")
    s3.copy_object(Bucket=bucket, Key="dst/ö +", CopySource={"Bucket": bucket, "Key": "sp ace/ü+%"})
    assert body_of(s3, bucket, "dst/ö +") == b"v"


# ---------------------------------------------------------------------------------------------
# Versioning, as an unversioned bucket answers.


def test_get_bucket_versioning_unversioned_has_no_status(s3, bucket):
    got = s3.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in got and "MFADelete" not in got, f"GetBucketVersioning on a new bucket: {got}"


def test_list_object_versions_lists_current_objects_with_null_version(s3, bucket):
    etag = put(s3, bucket, "a/k", b"hello")["ETag"]
    put(s3, bucket, "b", b"x")
    got = s3.list_object_versions(Bucket=bucket)
    versions = [(v["Key"], v["VersionId"], v["IsLatest"], v.get("ETag"), v.get("Size")) for v in got.get("Versions", [])]
    assert versions[:1] == [("a/k", "null", True, etag, 5)] and len(versions) == 2, f"ListObjectVersions: {versions}"
    assert not got.get("DeleteMarkers"), f"DeleteMarkers on an unversioned bucket: {got.get('DeleteMarkers')}"


def test_list_object_versions_prefix_and_delimiter(s3, bucket):
    for key in ["a/1", "a/2", "b"]:
        put(s3, bucket, key)
    got = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    keys = [v["Key"] for v in got.get("Versions", [])]
    prefixes = [p["Prefix"] for p in got.get("CommonPrefixes", [])]
    assert (keys, prefixes) == (["b"], ["a/"]), f"ListObjectVersions delimiter=/: {keys} {prefixes}"


# ---------------------------------------------------------------------------------------------
# CORS.

CORS = {
    "CORSRules": [
        {
            "AllowedOrigins": ["https://dashboard.example"],
            "AllowedMethods": ["GET", "PUT"],
            "AllowedHeaders": ["content-type", "x-amz-*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 600,
        }
    ]
}


def test_bucket_cors_put_get_delete(s3, bucket):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    rules = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    rule = rules[0]
    got = (rule["AllowedOrigins"], rule["AllowedMethods"], rule.get("ExposeHeaders"), rule.get("MaxAgeSeconds"))
    assert got == (["https://dashboard.example"], ["GET", "PUT"], ["ETag"], 600), f"GetBucketCors: {rules}"
    s3.delete_bucket_cors(Bucket=bucket)
    expect_error(
        lambda: s3.get_bucket_cors(Bucket=bucket), 404, "NoSuchCORSConfiguration", "GetBucketCors after DeleteBucketCors"
    )


def test_get_bucket_cors_without_configuration(s3, bucket):
    expect_error(lambda: s3.get_bucket_cors(Bucket=bucket), 404, "NoSuchCORSConfiguration", "GetBucketCors, none set")


def test_cors_preflight_answers_configured_headers(s3, bucket):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    answer = requests.options(
        f"{s3.meta.endpoint_url}/{bucket}/upload.bin",
        headers={
            "Origin": "https://dashboard.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, x-amz-date",
        },
        timeout=10,
    )
    h = answer.headers
    got = (
        answer.status_code,
        h.get("Access-Control-Allow-Origin"),
        (h.get("Access-Control-Allow-Methods") or "").replace(" ", ""),
        (h.get("Access-Control-Allow-Headers") or "").replace(" ", "").lower(),
        h.get("Access-Control-Max-Age"),
    )
    assert got[0] == 200 and got[1] == "https://dashboard.example", f"OPTIONS preflight: {got}"
    assert "PUT" in got[2].split(",") and "content-type" in got[3] and "x-amz-date" in got[3], f"preflight: {got}"
    assert got[4] == "600", f"preflight Access-Control-Max-Age {got[4]!r}"


def test_cors_preflight_from_other_origin_is_forbidden(s3, bucket):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    answer = requests.options(
        f"{s3.meta.endpoint_url}/{bucket}/upload.bin",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
        timeout=10,
    )
    assert answer.status_code == 403 and "Access-Control-Allow-Origin" not in answer.headers, (
        f"preflight from an origin no rule allows: {answer.status_code} {dict(answer.headers)}"
    )


def test_cors_get_with_origin_gets_allow_origin(s3, bucket):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    put(s3, bucket, "k", b"v")

    def add_origin(request, **_):
        request.headers["Origin"] = "https://dashboard.example"

    s3.meta.events.register("before-sign.s3.GetObject", add_origin)
    try:
        got = s3.get_object(Bucket=bucket, Key="k")
    finally:
        s3.meta.events.unregister("before-sign.s3.GetObject", add_origin)
    h = headers_of(got)
    assert h.get("access-control-allow-origin") == "https://dashboard.example", (
        f"GET with Origin: Access-Control-Allow-Origin {h.get('access-control-allow-origin')!r}"
    )
    assert "etag" in h.get("access-control-expose-headers", "").lower(), (
        f"GET with Origin: Access-Control-Expose-Headers {h.get('access-control-expose-headers')!r}"
    )


# ---------------------------------------------------------------------------------------------
# Headers and errors.


def test_default_content_type_is_binary_octet_stream(s3, bucket):
    put(s3, bucket, "k", b"v")
    got = s3.head_object(Bucket=bucket, Key="k").get("ContentType")
    assert got == "binary/octet-stream", f"PUT without Content-Type; HEAD Content-Type {got!r}"


def test_content_type_kept(s3, bucket):
    put(s3, bucket, "k", b"{}", ContentType="application/json")
    assert s3.head_object(Bucket=bucket, Key="k")["ContentType"] == "application/json"


def test_request_id_on_success(s3, bucket):
    put(s3, bucket, "k", b"v")
    for name, answer in [
        ("GET", s3.get_object(Bucket=bucket, Key="k")),
        ("HEAD", s3.head_object(Bucket=bucket, Key="k")),
        ("ListObjectsV2", s3.list_objects_v2(Bucket=bucket)),
    ]:
        assert headers_of(answer).get("x-amz-request-id"), f"{name}: no x-amz-request-id header"


def test_request_id_on_error(s3, bucket):
    _, _, _, response = error_of(lambda: s3.get_object(Bucket=bucket, Key="missing"), "GET of a missing key")
    assert headers_of(response).get("x-amz-request-id"), "NoSuchKey answer without x-amz-request-id header"
    assert response["Error"].get("RequestId") or response["ResponseMetadata"].get("RequestId"), "no RequestId"
    # The body names the same id as the header, also for errors the protocol layer makes.
    raw = requests.get(f"{ENDPOINT}/{bucket}/missing", timeout=10)
    header = raw.headers.get("x-amz-request-id")
    assert header and f"<RequestId>{header}</RequestId>" in raw.text, f"unsigned GET: {raw.status_code} {raw.text!r}"


def test_get_object_in_missing_bucket_is_no_such_bucket(s3):
    name = new_bucket_name("missing")
    expect_error(lambda: s3.get_object(Bucket=name, Key="k"), 404, "NoSuchBucket", "GetObject in a missing bucket")


def test_put_object_in_missing_bucket_is_no_such_bucket(s3):
    name = new_bucket_name("missing")
    expect_error(lambda: put(s3, name, "k"), 404, "NoSuchBucket", "PutObject in a missing bucket")


def test_list_objects_in_missing_bucket_is_no_such_bucket(s3):
    name = new_bucket_name("missing")
    expect_error(lambda: s3.list_objects_v2(Bucket=name), 404, "NoSuchBucket", "ListObjectsV2 of a missing bucket")


def test_create_own_bucket_is_bucket_already_owned_by_you(s3, bucket):
    # AWS keeps a legacy 200 for this in us-east-1 only; every other region, MinIO and Garage
    # answer 409 BucketAlreadyOwnedByYou, which is what clients handle.
    expect_error(
        lambda: s3.create_bucket(Bucket=bucket), 409, "BucketAlreadyOwnedByYou", "CreateBucket of an existing own bucket"
    )


def test_create_bucket_with_invalid_name_is_invalid_bucket_name(s3):
    expect_error(
        lambda: s3.create_bucket(Bucket="Invalid_Name"), 400, "InvalidBucketName", "CreateBucket Invalid_Name"
    )


def test_delete_non_empty_bucket_is_bucket_not_empty(s3, bucket):
    put(s3, bucket, "k")
    expect_error(lambda: s3.delete_bucket(Bucket=bucket), 409, "BucketNotEmpty", "DeleteBucket of a bucket with a key")


def test_missing_key_is_no_such_key_with_message(s3, bucket):
    _, _, _, response = error_of(lambda: s3.get_object(Bucket=bucket, Key="missing"), "GET of a missing key")
    error = response["Error"]
    assert (response["ResponseMetadata"]["HTTPStatusCode"], error.get("Code")) == (404, "NoSuchKey"), f"{error}"
    assert error.get("Message"), f"NoSuchKey without a Message: {error}"


def test_head_missing_key_is_404(s3, bucket):
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="missing"), 404, "404", "HEAD of a missing key")


def test_delete_missing_key_is_no_content(s3, bucket):
    got = s3.delete_object(Bucket=bucket, Key="never-existed")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 204, f"DELETE of a missing key: {got['ResponseMetadata']}"


def test_get_bucket_location(s3, bucket):
    got = s3.get_bucket_location(Bucket=bucket)
    assert got.get("LocationConstraint") in (None, "us-east-1"), f"GetBucketLocation: {got}"


def test_wrong_secret_is_signature_does_not_match(bucket):
    expect_error(
        lambda: s3_client(secret="wrong-secret-wrong-secret").list_objects_v2(Bucket=bucket),
        403,
        "SignatureDoesNotMatch",
        "ListObjectsV2 signed with a wrong secret",
    )


def test_unknown_access_key_is_invalid_access_key_id(bucket):
    expect_error(
        lambda: s3_client(access="AKIDUNKNOWN0000").list_objects_v2(Bucket=bucket),
        403,
        "InvalidAccessKeyId",
        "ListObjectsV2 with an unknown access key",
    )


def test_presigned_url_within_seven_days_works(s3, bucket):
    put(s3, bucket, "k", b"presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=604800)
    answer = requests.get(url, timeout=10)
    assert (answer.status_code, answer.content) == (200, b"presigned"), f"presigned GET (7 days): {answer.status_code}"


def test_presigned_url_longer_than_seven_days_refused(s3, bucket):
    put(s3, bucket, "k", b"presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=700000)
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 400 and "AuthorizationQueryParametersError" in answer.text, (
        f"presigned GET with X-Amz-Expires=700000 (> 604800): {answer.status_code} {answer.text[:200]!r}"
    )


def test_sigv2_presigned_url_longer_than_seven_days_refused(bucket):
    """SigV2's `Expires` is a time: a URL valid for more than a week is refused like SigV4's."""
    v2 = s3_client(signature_version="s3")
    put(v2, bucket, "k", b"presigned")
    ok = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=3600)
    assert "AWSAccessKeyId=" in ok, f"not a SigV2 URL: {ok}"
    answer = requests.get(ok, timeout=10)
    assert (answer.status_code, answer.content) == (200, b"presigned"), f"SigV2 presigned GET: {answer.status_code}"
    too_long = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=700000)
    answer = requests.get(too_long, timeout=10)
    assert answer.status_code == 400 and "AuthorizationQueryParametersError" in answer.text, (
        f"SigV2 presigned GET valid for 700000 s: {answer.status_code} {answer.text[:200]!r}"
    )


def test_presigned_put(s3, bucket):
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=600)
    answer = requests.put(url, data=b"uploaded", timeout=10)
    assert answer.status_code == 200, f"presigned PUT: {answer.status_code} {answer.text[:200]!r}"
    assert body_of(s3, bucket, "up") == b"uploaded"


# ---------------------------------------------------------------------------------------------
# Checksums and content encoding.

ALGORITHMS = ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]


def checksum_param(algorithm):
    return "Checksum" + algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_checksum_returned_and_stored(s3, bucket, algorithm):
    # The values are computed here: botocore needs awscrt for CRC32C and CRC64NVME.
    if checksum_param(algorithm) not in s3.meta.service_model.operation_model("PutObject").input_shape.members:
        pytest.skip(f"botocore {botocore.__version__} has no {algorithm}")
    data = b"checksummed body " * 100
    value = checksum_b64(algorithm, data)
    answer = put(s3, bucket, "k", data, **{checksum_param(algorithm): value})
    assert answer.get(checksum_param(algorithm)) == value, (
        f"PutObject x-amz-checksum-{algorithm.lower()}={value}: answer has {answer.get(checksum_param(algorithm))!r}"
    )
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head.get(checksum_param(algorithm)) == value, f"HEAD checksum-mode: {head.get(checksum_param(algorithm))!r}"
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got.get(checksum_param(algorithm)) == value, f"GET checksum-mode: {got.get(checksum_param(algorithm))!r}"
    assert got["Body"].read() == data


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256"])
def test_put_wrong_checksum_is_bad_digest(s3, bucket, algorithm):
    wrong = checksum_b64(algorithm, b"other body")
    expect_error(
        lambda: put(s3, bucket, "k", b"body", **{checksum_param(algorithm): wrong}),
        400,
        "BadDigest",
        f"PutObject with a wrong x-amz-checksum-{algorithm.lower()}",
    )
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="k"), 404, "404", "HEAD after a refused PUT")


def test_put_wrong_content_md5_is_bad_digest(s3, bucket):
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    expect_error(lambda: put(s3, bucket, "k", b"body", ContentMD5=wrong), 400, "BadDigest", "PutObject wrong Content-MD5")


def test_get_multipart_object_with_default_checksum_validation(s3, bucket):
    data = os.urandom(MIN_PART + 4096)
    config = TransferConfig(multipart_threshold=MIN_PART, multipart_chunksize=MIN_PART)
    s3.upload_fileobj(io.BytesIO(data), bucket, "mp", Config=config)
    try:
        got = s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")["Body"].read()
    except FlexibleChecksumError as err:
        raise AssertionError(f"GET of a multipart upload (boto3 defaults) failed its checksum: {err}") from None
    assert got == data


def test_multipart_overwrite_does_not_serve_stale_checksum(s3, bucket):
    old = b"old single-part body"
    put(s3, bucket, "k", old, ChecksumSHA256=checksum_b64("SHA256", old))
    first, last = two_part_body()
    upload, parts = multipart(s3, bucket, "k", [first, last])
    complete(s3, bucket, "k", upload, parts)
    try:
        got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
        body = got["Body"].read()
    except FlexibleChecksumError as err:
        raise AssertionError(f"GET after a multipart overwrite served a stale checksum: {err}") from None
    assert got.get("ChecksumSHA256") != checksum_b64("SHA256", old), "the old object's SHA-256 is still served"
    assert body == first + last


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_multipart_full_object_checksum_is_the_whole_objects_crc(s3, bucket, algorithm):
    # What AWS CLI v2 and boto3 >= 1.36 send for multipart uploads: a CRC of the whole object,
    # which the store combines from the parts' CRCs without reading them again.
    first, last = two_part_body()
    whole = checksum_b64(algorithm, first + last)
    upload, parts = multipart(
        s3, bucket, "k", [first, last], ChecksumAlgorithm=algorithm, ChecksumType="FULL_OBJECT"
    )
    wrong = checksum_b64(algorithm, first)
    expect_error(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts},
            ChecksumType="FULL_OBJECT", **{checksum_param(algorithm): wrong},
        ),
        400,
        "BadDigest",
        f"CompleteMultipartUpload with a wrong full-object {algorithm}",
    )
    # The refused completion changed nothing: the right one succeeds with the same parts.
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts},
        ChecksumType="FULL_OBJECT", **{checksum_param(algorithm): whole},
    )
    assert done.get(checksum_param(algorithm)) == whole, f"Complete answered {done.get(checksum_param(algorithm))!r}, expected {whole}"
    assert done.get("ChecksumType") == "FULL_OBJECT", f"Complete's checksum type: {done.get('ChecksumType')!r}"
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head.get(checksum_param(algorithm)) == whole, f"HEAD checksum-mode: {head.get(checksum_param(algorithm))!r}"
    assert head.get("ChecksumType") == "FULL_OBJECT", f"HEAD checksum type: {head.get('ChecksumType')!r}"
    assert body_of(s3, bucket, "k") == first + last


def test_multipart_checksum_types_follow_s3_rules(s3, bucket):
    created = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC64NVME")
    assert created.get("ChecksumType") == "FULL_OBJECT", f"CRC64NVME's default type: {created.get('ChecksumType')!r}"
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=created["UploadId"])
    created = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC32")
    assert created.get("ChecksumType") == "COMPOSITE", f"CRC32's default type: {created.get('ChecksumType')!r}"
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=created["UploadId"])
    for algorithm, kind in [("CRC64NVME", "COMPOSITE"), ("SHA256", "FULL_OBJECT"), ("SHA1", "FULL_OBJECT")]:
        expect_error(
            lambda: s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm=algorithm, ChecksumType=kind),
            400,
            "InvalidRequest",
            f"CreateMultipartUpload {algorithm} {kind}",
        )
    # A completion that claims a checksum the upload does not have is refused, not ignored.
    first, last = two_part_body()
    upload, parts = multipart(s3, bucket, "k", [first, last])
    expect_error(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": parts},
            ChecksumCRC64NVME=checksum_b64("CRC64NVME", first + last),
        ),
        400,
        "InvalidRequest",
        "CompleteMultipartUpload claiming a CRC64NVME the upload was not created with",
    )


def aws_chunked_put(bucket, key, data, content_encoding):
    """PutObject as boto3 >= 1.36 sends it over TLS: aws-chunked body, CRC32 in the trailer."""
    trailer = f"x-amz-checksum-crc32:{checksum_b64('CRC32', data)}"
    body = b"%x\r\n%s\r\n0\r\n%s\r\n\r\n" % (len(data), data, trailer.encode())
    headers = {
        "Content-Encoding": content_encoding,
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Sdk-Checksum-Algorithm": "CRC32",
        "Content-Length": str(len(body)),
    }
    return signed_request("PUT", f"/{bucket}/{quote_key(key)}", headers, body, streaming_trailer=True)


def test_aws_chunked_content_encoding_not_stored(s3, bucket):
    answer = aws_chunked_put(bucket, "k", b"hello chunks", "aws-chunked")
    assert answer.status_code == 200, f"aws-chunked PUT: {answer.status_code} {answer.text[:300]!r}"
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head.get("ContentEncoding") in (None, ""), f"stored Content-Encoding {head.get('ContentEncoding')!r}"
    assert head.get("ChecksumCRC32") == checksum_b64("CRC32", b"hello chunks"), f"trailer CRC32: {head}"
    assert body_of(s3, bucket, "k") == b"hello chunks"


def test_aws_chunked_keeps_user_content_encoding(s3, bucket):
    answer = aws_chunked_put(bucket, "k", b"pretend gzip", "aws-chunked,gzip")
    assert answer.status_code == 200, f"aws-chunked,gzip PUT: {answer.status_code} {answer.text[:300]!r}"
    got = s3.head_object(Bucket=bucket, Key="k").get("ContentEncoding")
    assert got == "gzip", f"PUT Content-Encoding: aws-chunked,gzip; stored {got!r}, expected 'gzip'"


# ---------------------------------------------------------------------------------------------
# Metadata, batch delete, tagging.


def test_user_metadata_round_trip(s3, bucket):
    put(s3, bucket, "k", b"v", Metadata={"colour": "Blue Sky", "Mixed-Case": "v", "empty": ""})
    for name, answer in [("HEAD", s3.head_object(Bucket=bucket, Key="k")), ("GET", s3.get_object(Bucket=bucket, Key="k"))]:
        assert answer["Metadata"] == {"colour": "Blue Sky", "mixed-case": "v", "empty": ""}, (
            f"{name} x-amz-meta-*: {answer['Metadata']}"
        )


def test_response_header_overrides(s3, bucket):
    put(s3, bucket, "k", b"v")
    got = s3.get_object(
        Bucket=bucket, Key="k", ResponseContentType="text/csv", ResponseContentDisposition="attachment; filename=k.csv"
    )
    assert (got["ContentType"], got.get("ContentDisposition")) == ("text/csv", "attachment; filename=k.csv"), (
        f"response-content-type / -disposition: {got['ContentType']} {got.get('ContentDisposition')}"
    )


def test_delete_objects_verbose(s3, bucket):
    for key in ["a", "b/c", "d/"]:
        put(s3, bucket, key, b"")
    got = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ["a", "b/c", "d/", "absent"]]})
    deleted = sorted(d["Key"] for d in got.get("Deleted", []))
    assert deleted == ["a", "absent", "b/c", "d/"] and not got.get("Errors"), f"DeleteObjects: {got}"
    assert all_keys_v2(s3, bucket) == [], f"listing after DeleteObjects: {all_keys_v2(s3, bucket)}"


def test_delete_objects_quiet(s3, bucket):
    for key in ["a", "b/c"]:
        put(s3, bucket, key)
    got = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b/c"}], "Quiet": True})
    assert not got.get("Deleted") and not got.get("Errors"), f"quiet DeleteObjects lists {got.get('Deleted')}"
    assert all_keys_v2(s3, bucket) == [], f"listing after quiet DeleteObjects: {all_keys_v2(s3, bucket)}"


def test_object_tagging_put_get_delete(s3, bucket):
    put(s3, bucket, "k")
    tags = [{"Key": "project", "Value": "cloister"}, {"Key": "tier", "Value": "gold"}]
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": tags})
    got = sorted(s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"], key=lambda t: t["Key"])
    assert got == tags, f"GetObjectTagging: {got}"
    count = s3.get_object(Bucket=bucket, Key="k").get("TagCount")
    assert count == 2, f"GET x-amz-tagging-count {count}"
    s3.delete_object_tagging(Bucket=bucket, Key="k")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == [], "tags left after DeleteObjectTagging"


def test_put_object_with_tagging_header(s3, bucket):
    put(s3, bucket, "k", Tagging="a=1&b=two")
    got = sorted((t["Key"], t["Value"]) for t in s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"])
    assert got == [("a", "1"), ("b", "two")], f"PutObject x-amz-tagging: a=1&b=two; GetObjectTagging {got}"


def test_bucket_tagging_put_get_delete(s3, bucket):
    tags = [{"Key": "owner", "Value": "team"}]
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
    got = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    assert got == tags, f"GetBucketTagging: {got}"
    s3.delete_bucket_tagging(Bucket=bucket)
    expect_error(lambda: s3.get_bucket_tagging(Bucket=bucket), 404, "NoSuchTagSet", "GetBucketTagging after delete")


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-rfE"]))


def test_put_without_content_length_is_missing_content_length(s3, bucket):
    # A plain chunked PUT: AWS answers 411 MissingContentLength (only aws-chunked uploads,
    # which carry x-amz-decoded-content-length, may omit it), and nothing is stored.
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from s3_common import ACCESS_KEY, REGION, SECRET_KEY

    url = f"{ENDPOINT}/{bucket}/chunked"
    parts = [b"hello " * 10, b"world " * 20]
    req = AWSRequest(method="PUT", url=url, data=b"".join(parts), headers={})
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(req)
    headers = {k: v for k, v in req.headers.items() if k.lower() != "content-length"}
    answer = requests.put(url, headers=headers, data=iter(parts), timeout=30)
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 411 and "MissingContentLength" in answer.text, f"{answer.status_code} {answer.text!r}"
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="chunked"), 404, "404", "HEAD after a refused chunked PUT")
