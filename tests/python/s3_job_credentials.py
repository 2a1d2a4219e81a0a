"""A job credential through boto3: everything a script holding it could try against the S3
endpoint. Driven by crates/storage/tests/job_credentials.rs, which starts the endpoint, writes
the objects below and issues the credentials.

The job's scope: read `data/in/photo.jpg`; write under `data/out/` and anywhere in `results`.
Objects present: data/{in/photo.jpg, in/photo.jpg.bak, in/photo.jp, in/secret.txt,
out/earlier.txt}, other/in/photo.jpg.

Environment: CLOISTER_S3, S3_ACCESS_KEY/S3_SECRET_KEY (administrator), JOB_ACCESS_KEY/
JOB_SECRET_KEY, EXPIRED_ACCESS_KEY/EXPIRED_SECRET_KEY, REVOKED_ACCESS_KEY/REVOKED_SECRET_KEY.
Exits non-zero on the first failed check.
"""

import os
import urllib.error
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["CLOISTER_S3"]
INPUT = "in/photo.jpg"
checks = 0


def client(key, secret):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def refused(call, what, codes=("AccessDenied",)):
    """`call` must fail with a 403 whose code is one of `codes`; the message must not hold the
    job's secret."""
    try:
        result = call()
    except ClientError as err:
        code = err.response["Error"]["Code"]
        status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        check(status == 403, f"{what}: status {status} ({code}), expected 403")
        # HEAD answers carry no body, so no code: botocore reports the status.
        check(code in codes or code == "403", f"{what}: code {code}, expected one of {codes}")
        check(os.environ["JOB_SECRET_KEY"] not in str(err.response), f"{what}: secret echoed")
        return
    raise SystemExit(f"FAILED: {what}: allowed ({result!r:.200})")


def http(method, url, data=None):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def main():
    admin = client(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
    job = client(os.environ["JOB_ACCESS_KEY"], os.environ["JOB_SECRET_KEY"])

    # What the job may do.
    body = job.get_object(Bucket="data", Key=INPUT)["Body"].read()
    check(body == b"<in/photo.jpg>", f"input read back as {body!r}")
    ranged = job.get_object(Bucket="data", Key=INPUT, Range="bytes=1-2")["Body"].read()
    check(ranged == b"in", f"ranged read {ranged!r}")
    check(job.head_object(Bucket="data", Key=INPUT)["ContentLength"] == 14, "head of the input")
    check(
        job.get_object(Bucket="data", Key=INPUT, PartNumber=1)["Body"].read() == body,
        "part 1 of the input",
    )
    job.put_object(Bucket="data", Key="out/result.txt", Body=b"done")
    job.put_object(Bucket="results", Key="a/b.txt", Body=b"r")
    # A multipart upload (two parts) through the transfer manager, then by hand with ListParts
    # and an abort.
    job.upload_fileobj(
        __import__("io").BytesIO(b"m" * (6 * 1024 * 1024)),
        "data",
        "out/multipart.bin",
        Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024),
    )
    check(
        admin.head_object(Bucket="data", Key="out/multipart.bin")["ContentLength"] == 6 * 1024 * 1024,
        "multipart upload under out/",
    )
    upload = job.create_multipart_upload(Bucket="data", Key="out/aborted.bin")["UploadId"]
    job.upload_part(Bucket="data", Key="out/aborted.bin", UploadId=upload, PartNumber=1, Body=b"p")
    parts = job.list_parts(Bucket="data", Key="out/aborted.bin", UploadId=upload)["Parts"]
    check(len(parts) == 1, f"list_parts: {parts}")
    job.abort_multipart_upload(Bucket="data", Key="out/aborted.bin", UploadId=upload)
    job.copy_object(Bucket="data", Key="out/copy.jpg", CopySource={"Bucket": "data", "Key": INPUT})

    # Reads outside the scope, including keys that only share a prefix with the input.
    for bucket, key in [
        ("data", "in/secret.txt"),
        ("data", "in/photo.jpg.bak"),
        ("data", "in/photo.jp"),
        ("data", "out/earlier.txt"),
        ("other", INPUT),
    ]:
        refused(lambda: job.get_object(Bucket=bucket, Key=key), f"GET {bucket}/{key}")
        refused(lambda: job.head_object(Bucket=bucket, Key=key), f"HEAD {bucket}/{key}")
    refused(lambda: job.get_object_attributes(Bucket="data", Key=INPUT, ObjectAttributes=["ETag"]),
            "GetObjectAttributes")
    refused(lambda: job.get_object_tagging(Bucket="data", Key=INPUT), "GetObjectTagging")
    refused(lambda: job.get_object_acl(Bucket="data", Key=INPUT), "GetObjectAcl")

    # Writes outside the output folders: a sibling, the folder without its slash, `..` and `.`
    # segments (sent as they are: botocore does not resolve them), an empty segment.
    for key in ["out2/x.txt", "out", "outx/y", "out/../x.txt", "out/./x.txt", "out//x.txt",
                "out/a/../../in/photo.jpg", "in/new.txt"]:
        refused(lambda: job.put_object(Bucket="data", Key=key, Body=b"no"), f"PUT data/{key}")
    for key in ["out2/x.txt", "out/../x.txt", "x.txt", "out/a/../../in/photo.jpg"]:
        try:
            admin.head_object(Bucket="data", Key=key)
            raise SystemExit(f"FAILED: data/{key} exists after a refused write")
        except ClientError as err:
            check(err.response["ResponseMetadata"]["HTTPStatusCode"] == 404, f"head {key}: {err}")
    check(admin.get_object(Bucket="data", Key=INPUT)["Body"].read() == body, "input unchanged")
    refused(lambda: job.create_multipart_upload(Bucket="data", Key="out2/big.bin"), "multipart to out2/")
    refused(lambda: job.put_object(Bucket="other", Key="out/x.txt", Body=b"no"), "PUT other/out/")

    # Copies whose source is outside the read scope, into the output folder.
    refused(lambda: job.copy_object(Bucket="data", Key="out/stolen.txt",
                                    CopySource={"Bucket": "data", "Key": "in/secret.txt"}),
            "CopyObject from in/secret.txt")
    upload = admin.create_multipart_upload(Bucket="data", Key="out/pc.bin")["UploadId"]
    refused(lambda: job.upload_part_copy(Bucket="data", Key="out/pc.bin", UploadId=upload, PartNumber=1,
                                         CopySource={"Bucket": "data", "Key": "in/secret.txt"}),
            "UploadPartCopy from in/secret.txt")
    job.upload_part_copy(Bucket="data", Key="out/pc.bin", UploadId=upload, PartNumber=1,
                         CopySource={"Bucket": "data", "Key": INPUT})
    admin.abort_multipart_upload(Bucket="data", Key="out/pc.bin", UploadId=upload)

    # Deletes, listings, bucket operations, tagging, ACLs, CORS.
    refused(lambda: job.delete_object(Bucket="data", Key=INPUT), "DeleteObject of the input")
    refused(lambda: job.delete_object(Bucket="data", Key="out/result.txt"), "DeleteObject of an output")
    refused(lambda: job.delete_objects(Bucket="data", Delete={"Objects": [{"Key": INPUT}]}), "DeleteObjects")
    refused(lambda: job.list_buckets(), "ListBuckets")
    refused(lambda: job.list_objects_v2(Bucket="data"), "ListObjectsV2")
    refused(lambda: job.list_objects_v2(Bucket="data", Prefix="out/"), "ListObjectsV2 of out/")
    refused(lambda: job.list_objects(Bucket="data", Prefix="in/"), "ListObjects of in/")
    refused(lambda: job.list_multipart_uploads(Bucket="data"), "ListMultipartUploads")
    refused(lambda: job.create_bucket(Bucket="job-made"), "CreateBucket")
    refused(lambda: job.delete_bucket(Bucket="other"), "DeleteBucket")
    refused(lambda: job.head_bucket(Bucket="data"), "HeadBucket")
    refused(lambda: job.put_object_tagging(Bucket="data", Key="out/result.txt",
                                           Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}),
            "PutObjectTagging")
    refused(lambda: job.put_object_acl(Bucket="data", Key="out/result.txt", ACL="public-read"), "PutObjectAcl")
    refused(lambda: job.put_bucket_cors(Bucket="data", CORSConfiguration={"CORSRules": [
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]}), "PutBucketCors")
    refused(lambda: job.put_bucket_tagging(Bucket="data", Tagging={"TagSet": []}), "PutBucketTagging")
    names = [b["Name"] for b in admin.list_buckets()["Buckets"]]
    check("job-made" not in names and "other" in names, f"buckets: {names}")

    # Presigned URLs made with the job's credential obey its scope.
    status, _ = http("GET", job.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": INPUT}))
    check(status == 200, f"presigned GET of the input: {status}")
    status, answer = http("GET", job.generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "in/secret.txt"}))
    check(status == 403 and b"AccessDenied" in answer, f"presigned GET outside: {status} {answer!r}")
    status, _ = http("PUT", job.generate_presigned_url(
        "put_object", Params={"Bucket": "data", "Key": "out2/p.txt"}), data=b"no")
    check(status == 403, f"presigned PUT outside: {status}")
    status, _ = http("DELETE", job.generate_presigned_url(
        "delete_object", Params={"Bucket": "data", "Key": INPUT}))
    check(status == 403, f"presigned DELETE: {status}")

    # Expired, revoked, tampered credentials; the administrator unaffected.
    expired = client(os.environ["EXPIRED_ACCESS_KEY"], os.environ["EXPIRED_SECRET_KEY"])
    refused(lambda: expired.get_object(Bucket="data", Key=INPUT), "expired credential")
    revoked = client(os.environ["REVOKED_ACCESS_KEY"], os.environ["REVOKED_SECRET_KEY"])
    refused(lambda: revoked.get_object(Bucket="data", Key=INPUT), "revoked credential",
            codes=("InvalidAccessKeyId",))
    secret = os.environ["JOB_SECRET_KEY"]
    tampered = client(os.environ["JOB_ACCESS_KEY"], secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    refused(lambda: tampered.get_object(Bucket="data", Key=INPUT), "tampered secret",
            codes=("SignatureDoesNotMatch",))
    check(admin.get_object(Bucket="data", Key="in/secret.txt")["Body"].read() == b"<in/secret.txt>",
          "administrator reads")
    admin.delete_object(Bucket="data", Key="out/result.txt")
    check(len(admin.list_objects_v2(Bucket="data")["Contents"]) >= 5, "administrator lists")
    print(f"s3_job_credentials: {checks} checks passed")


if __name__ == "__main__":
    main()
