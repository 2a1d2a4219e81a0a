"""Model-based property test of the embedded S3 endpoint (issue 12).

Hypothesis drives random sequences of put / copy / delete / multipart (create, upload part,
complete, abort) / list (prefix, delimiter, page size) through boto3 and, after every step,
compares the whole bucket (keys, sizes, ETags, bodies) with an in-memory model of S3.

    CLOISTER_S3=... S3_ACCESS_KEY=... S3_SECRET_KEY=... python3 -m pytest tests/python/s3_model.py -q

S3_MODEL_EXAMPLES / S3_MODEL_STEPS change the run's size (defaults keep it under a minute).
"""

import hashlib
import os

import hypothesis.strategies as st
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from s3_common import MIN_PART, empty_and_delete_bucket, new_bucket_name, s3_client

S3 = s3_client()

# Few names, so that steps collide: folder markers beside keys, keys below keys, `//`, `.`.
SEGMENTS = ["a", "b", "é", "sp ace", "+", "%", ".", ""]
KEYS = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join).filter(bool)
PREFIXES = st.sampled_from(["", "a", "a/", "/", "é", "a/b", "sp"])
DELIMITERS = st.sampled_from([None, "/", "a"])
BODIES = st.binary(max_size=64)


def md5_etag(data):
    return f'"{hashlib.md5(data).hexdigest()}"'


def multipart_etag(parts):
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def expected_listing(model, prefix, delimiter):
    """(keys, common prefixes) as S3 lists them."""
    keys, prefixes = [], set()
    for key in sorted(model, key=lambda k: k.encode()):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if delimiter and delimiter in rest:
            prefixes.add(prefix + rest[: rest.index(delimiter) + len(delimiter)])
        else:
            keys.append(key)
    return keys, sorted(prefixes, key=lambda p: p.encode())


class S3Model(RuleBasedStateMachine):
    uploads = Bundle("uploads")

    def __init__(self):
        super().__init__()
        self.bucket = new_bucket_name("model")
        S3.create_bucket(Bucket=self.bucket)
        # key -> (body, ETag)
        self.objects = {}
        # upload id -> (key, {part number: body})
        self.pending = {}

    def teardown(self):
        empty_and_delete_bucket(S3, self.bucket)

    @rule(key=KEYS, body=BODIES)
    def put(self, key, body):
        etag = S3.put_object(Bucket=self.bucket, Key=key, Body=body)["ETag"]
        assert etag == md5_etag(body), f"PUT {key!r}: ETag {etag}, expected {md5_etag(body)}"
        self.objects[key] = (body, etag)

    @rule(data=st.data(), dst=KEYS)
    def copy(self, data, dst):
        if not self.objects:
            return
        src = data.draw(st.sampled_from(sorted(self.objects)), label="src")
        if src == dst:
            return
        S3.copy_object(Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
        body, etag = self.objects[src]
        # A copy of a multipart object is not made of the same parts: the model does not predict
        # its ETag.
        self.objects[dst] = (body, etag if etag and "-" not in etag else None)

    @rule(key=KEYS)
    def delete(self, key):
        S3.delete_object(Bucket=self.bucket, Key=key)
        self.objects.pop(key, None)

    @rule(target=uploads, key=KEYS)
    def create_multipart(self, key):
        upload = S3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        self.pending[upload] = (key, {})
        return upload

    @rule(upload=uploads, number=st.integers(1, 3), big=st.sampled_from([False, False, False, True]), seed=BODIES)
    def upload_part(self, upload, number, big, seed):
        if upload not in self.pending:
            return
        key, parts = self.pending[upload]
        # A non-last part must be at least 5 MiB; a repeated pattern keeps the model cheap.
        body = (seed or b"\0") * (MIN_PART // max(len(seed), 1) + 1) if big else seed
        etag = S3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        assert etag == md5_etag(body), f"UploadPart {number}: ETag {etag}, expected {md5_etag(body)}"
        parts[number] = body

    @rule(upload=uploads)
    def complete(self, upload):
        if upload not in self.pending:
            return
        key, parts = self.pending[upload]
        numbers = sorted(parts)
        request = [{"PartNumber": n, "ETag": md5_etag(parts[n])} for n in numbers]
        bodies = [parts[n] for n in numbers]
        valid = bool(numbers) and all(len(b) >= MIN_PART for b in bodies[:-1])
        try:
            answer = S3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": request}
            )
        except ClientError as err:
            code = err.response["Error"]["Code"]
            assert not valid, f"Complete of {key!r} with parts {numbers} (sizes ok) failed: {code}"
            expected = ("EntityTooSmall",) if numbers else ("MalformedXML", "InvalidRequest")
            assert code in expected, f"Complete of {key!r} with parts {[len(b) for b in bodies]}: {code}"
            return  # S3 keeps the upload and its parts after a refused Complete.
        assert valid, f"Complete of {key!r} with parts of sizes {[len(b) for b in bodies]} succeeded"
        etag = multipart_etag(bodies)
        assert answer["ETag"] == etag, f"Complete of {key!r}: ETag {answer['ETag']}, expected {etag}"
        self.objects[key] = (b"".join(bodies), etag)
        del self.pending[upload]

    @rule(upload=consumes(uploads))
    def abort(self, upload):
        if upload not in self.pending:
            return
        key, _ = self.pending.pop(upload)
        S3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)

    @rule(prefix=PREFIXES, delimiter=DELIMITERS, page=st.integers(1, 4), v1=st.booleans())
    def list_objects(self, prefix, delimiter, page, v1):
        kw = {"Bucket": self.bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page}}
        if delimiter:
            kw["Delimiter"] = delimiter
        keys, prefixes = [], []
        for answer in S3.get_paginator("list_objects" if v1 else "list_objects_v2").paginate(**kw):
            keys += [o["Key"] for o in answer.get("Contents", [])]
            prefixes += [p["Prefix"] for p in answer.get("CommonPrefixes", [])]
        expected = expected_listing(self.objects, prefix, delimiter)
        what = f"{'V1' if v1 else 'V2'} prefix={prefix!r} delimiter={delimiter!r} page={page}"
        assert (keys, prefixes) == expected, f"{what}: got {(keys, prefixes)}, model {expected}"

    @invariant()
    def bucket_matches_model(self):
        listed = {}
        for answer in S3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in answer.get("Contents", []):
                listed[o["Key"]] = (o["Size"], o.get("ETag"))
        expected = {k: (len(b), e) for k, (b, e) in self.objects.items()}
        unknown_etag = {k for k, (_, e) in self.objects.items() if e is None}
        for key in unknown_etag & listed.keys():
            expected[key] = (expected[key][0], listed[key][1])
        assert listed == expected, f"listing {listed} differs from model {expected}"
        for key, (body, _) in self.objects.items():
            got = S3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            assert got == body, f"GET {key!r}: {len(got)} bytes differ from the model's {len(body)}"

    @invariant()
    def pending_uploads_match_model(self):
        listed = S3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        got = sorted((u["Key"], u["UploadId"]) for u in listed)
        expected = sorted((key, upload) for upload, (key, _) in self.pending.items())
        assert got == expected, f"ListMultipartUploads {got} differs from model {expected}"


S3Model.TestCase.settings = settings(
    max_examples=int(os.environ.get("S3_MODEL_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("S3_MODEL_STEPS", "20")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestS3Model = S3Model.TestCase
