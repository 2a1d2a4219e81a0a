//! Job credentials against the real S3 endpoint on loopback, with a real S3 client
//! (object_store, as the platform's tests use) and boto3 (`tests/python/s3_job_credentials.py`):
//! a job may read exactly its input and write only under its output folders; everything else,
//! and an expired, revoked or tampered credential, is refused by the endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_storage::{JobCredential, JobScope, NoEvents, Presigner, ScopedFolder, ScopedObject, Store};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

const ADMIN_KEY: &str = "admin-access";
const ADMIN_SECRET: &str = "admin-secret-0123456789";
const BUCKET: &str = "data";
const INPUT: &str = "in/photo.jpg";

struct Endpoint {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    async fn start(store: &Store) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = store.s3_service(ADMIN_KEY, ADMIN_SECRET);
        let task = tokio::spawn(cloister_storage::serve(
            listener,
            service,
            Default::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    fn client(&self, bucket: &str, key: &str, secret: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.url)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    fn admin(&self, bucket: &str) -> AmazonS3 {
        self.client(bucket, ADMIN_KEY, ADMIN_SECRET)
    }

    fn job(&self, bucket: &str, credential: &JobCredential) -> AmazonS3 {
        self.client(bucket, &credential.access_key_id, credential.secret_access_key())
    }
}

fn path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap()
}

/// The scope of a job of a service reading `data/in/…` and writing `data/out/` and `results/`.
fn scope() -> JobScope {
    JobScope {
        read: vec![ScopedObject {
            bucket: BUCKET.into(),
            key: INPUT.into(),
        }],
        write: vec![
            ScopedFolder {
                bucket: BUCKET.into(),
                folder: "out".into(),
            },
            ScopedFolder {
                bucket: "results".into(),
                folder: String::new(),
            },
        ],
    }
}

async fn populated_store(root: &Path) -> Store {
    let store = Store::open(root, Arc::new(NoEvents)).unwrap();
    for bucket in [BUCKET, "results", "other"] {
        store.create_bucket(bucket, true).await.unwrap();
    }
    for key in [
        INPUT,
        "in/photo.jpg.bak",
        "in/photo.jp",
        "in/secret.txt",
        "out/earlier.txt",
    ] {
        store
            .put_bytes(BUCKET, key, format!("<{key}>").into())
            .await
            .unwrap();
    }
    store.put_bytes("other", INPUT, "other".into()).await.unwrap();
    store
}

/// A refusal by the endpoint: `403` (`AccessDenied`, or `InvalidAccessKeyId` /
/// `SignatureDoesNotMatch` for credentials it does not accept).
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: object_store::Result<T>, what: &str) {
    match result {
        Err(object_store::Error::PermissionDenied { .. }) => {}
        // A listing's error keeps the status inside.
        Err(e) if format!("{e:?}").contains("status: 403") => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_job_credential_reads_its_input_and_writes_its_outputs_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated_store(dir.path()).await;
    let endpoint = Endpoint::start(&store).await;
    let credential = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "svc-job-1")
        .await
        .unwrap();
    assert!(!format!("{credential:?}").contains(credential.secret_access_key()));
    assert!(credential.secret_access_key().len() >= 40);
    let job = endpoint.job(BUCKET, &credential);

    // Its input, whole, by range, and its metadata.
    let body = job.get(&path(INPUT)).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], format!("<{INPUT}>").as_bytes());
    assert_eq!(&job.get_range(&path(INPUT), 1..3).await.unwrap()[..], b"in");
    assert_eq!(job.head(&path(INPUT)).await.unwrap().size, body.len() as u64);

    // Nothing else it may read: another object, keys sharing a prefix with the input, the same
    // key in another bucket, its own output folder.
    for key in [
        "in/secret.txt",
        "in/photo.jpg.bak",
        "in/photo.jp",
        "out/earlier.txt",
    ] {
        assert_refused(job.get(&path(key)).await, &format!("GET {key}"));
        assert_refused(job.head(&path(key)).await, &format!("HEAD {key}"));
    }
    assert_refused(
        endpoint.job("other", &credential).get(&path(INPUT)).await,
        "GET other/in/photo.jpg",
    );

    // Writes under its output folders, single and multipart.
    job.put(&path("out/result.txt"), PutPayload::from_static(b"done"))
        .await
        .unwrap();
    job.put(&path("out/deep/er.txt"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    endpoint
        .job("results", &credential)
        .put(&path("anywhere.txt"), PutPayload::from_static(b"r"))
        .await
        .unwrap();
    let mut upload = job.put_multipart(&path("out/big.bin")).await.unwrap();
    upload
        .put_part(PutPayload::from(vec![7u8; 5 * 1024 * 1024]))
        .await
        .unwrap();
    upload.put_part(PutPayload::from_static(b"tail")).await.unwrap();
    upload.complete().await.unwrap();
    let admin = endpoint.admin(BUCKET);
    assert_eq!(
        admin.head(&path("out/big.bin")).await.unwrap().size,
        5 * 1024 * 1024 + 4
    );
    // A copy of its input into its output folder is a read and a write it may do.
    job.copy(&path(INPUT), &path("out/copy.jpg")).await.unwrap();

    // Writes anywhere else: a sibling folder, the folder's name without its slash, the folder
    // marker itself, the input folder, another bucket.
    for key in ["out2/x.txt", "out", "outx", "in/new.txt", "new.txt"] {
        assert_refused(
            job.put(&path(key), PutPayload::from_static(b"no")).await,
            &format!("PUT {key}"),
        );
        assert!(admin.head(&path(key)).await.is_err(), "{key} was written");
    }
    assert_refused(
        job.put_multipart(&path("out2/big.bin")).await,
        "multipart upload to out2/",
    );
    assert_refused(
        endpoint
            .job("other", &credential)
            .put(&path("out/x.txt"), PutPayload::from_static(b"no"))
            .await,
        "PUT other/out/x.txt",
    );

    // A copy from outside its read scope, even into its output folder.
    assert_refused(
        job.copy(&path("in/secret.txt"), &path("out/stolen.txt")).await,
        "copy in/secret.txt to out/",
    );
    assert!(admin.head(&path("out/stolen.txt")).await.is_err());

    // No deleting (its input, or even its own outputs), no listing.
    assert_refused(job.delete(&path(INPUT)).await, "DELETE the input");
    assert_refused(job.delete(&path("out/result.txt")).await, "DELETE an output");
    assert!(admin.head(&path(INPUT)).await.is_ok());
    use futures::TryStreamExt as _;
    for prefix in [None, Some("out"), Some("in")] {
        let listed: object_store::Result<Vec<_>> = job.list(prefix.map(path).as_ref()).try_collect().await;
        assert_refused(listed, &format!("list {prefix:?}"));
    }

    // The administrator is unaffected.
    assert_eq!(
        &admin
            .get(&path("in/secret.txt"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"<in/secret.txt>"
    );
    let listed: Vec<_> = admin.list(None).try_collect().await.unwrap();
    assert!(listed.len() >= 8, "{listed:?}");
    admin.delete(&path("out/deep/er.txt")).await.unwrap();

    // A tampered secret, an unknown key id.
    let mut tampered = credential.secret_access_key().to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_refused(
        endpoint
            .client(BUCKET, &credential.access_key_id, &tampered)
            .get(&path(INPUT))
            .await,
        "tampered secret",
    );
    assert_refused(
        endpoint
            .client(
                BUCKET,
                "CJ00000000000000000000000000000000",
                credential.secret_access_key(),
            )
            .get(&path(INPUT))
            .await,
        "unknown key id",
    );

    // Presigned URLs made with the credential carry its scope.
    let http = reqwest::Client::new();
    let presigner = Presigner::new(
        &endpoint.url,
        "us-east-1",
        &credential.access_key_id,
        credential.secret_access_key(),
    );
    let none = http::HeaderMap::new();
    let url = |upload, key: &'static str| {
        let presigner = presigner.clone();
        let none = none.clone();
        async move {
            presigner
                .presign(upload, BUCKET, key, Duration::from_secs(600), &none, &[])
                .await
                .unwrap()
        }
    };
    let got = http.get(url(false, INPUT).await).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let refused = http.get(url(false, "in/secret.txt").await).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let text = refused.text().await.unwrap();
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(text.contains("outside its scope"), "{text}");
    assert!(!text.contains(credential.secret_access_key()), "{text}");
    let put = http
        .put(url(true, "out/presigned.txt").await)
        .body("p")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let put = http
        .put(url(true, "out2/presigned.txt").await)
        .body("p")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);

    // Revoked: refused at once, and revoking again is not an error.
    let signed_before = url(false, INPUT).await;
    store
        .revoke_job_credential(&credential.access_key_id)
        .await
        .unwrap();
    assert_refused(job.get(&path(INPUT)).await, "revoked credential");
    assert_eq!(http.get(signed_before).send().await.unwrap().status(), 403);
    store
        .revoke_job_credential(&credential.access_key_id)
        .await
        .unwrap();
    endpoint.shut_down().await;
}

#[tokio::test]
async fn credentials_survive_a_restart_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated_store(dir.path()).await;
    let lasting = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "svc-long")
        .await
        .unwrap();
    let brief = store
        .issue_job_credential(scope(), Duration::from_secs(1), "svc-short")
        .await
        .unwrap();
    let revoked = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "svc-revoked")
        .await
        .unwrap();
    store.revoke_job_credential(&revoked.access_key_id).await.unwrap();
    let endpoint = Endpoint::start(&store).await;
    endpoint.job(BUCKET, &brief).head(&path(INPUT)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Expired: refused, saying so (a presigned URL shows the error's body).
    assert_refused(
        endpoint.job(BUCKET, &brief).head(&path(INPUT)).await,
        "expired credential",
    );
    let http = reqwest::Client::new();
    let presigned = Presigner::new(
        &endpoint.url,
        "us-east-1",
        &brief.access_key_id,
        brief.secret_access_key(),
    )
    .presign(
        false,
        BUCKET,
        INPUT,
        Duration::from_secs(600),
        &http::HeaderMap::new(),
        &[],
    )
    .await
    .unwrap();
    let answer = http.get(&presigned).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let text = answer.text().await.unwrap();
    assert!(
        text.contains("<Code>AccessDenied</Code>") && text.contains("expired at"),
        "{text}"
    );
    endpoint.shut_down().await;
    drop(store);

    // No secret at rest: neither the index nor any other file of the store holds one.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for credential in [&lasting, &brief] {
            let secret = credential.secret_access_key().as_bytes();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{} holds a job secret",
                entry.display()
            );
        }
    }
    let key_file = dir.path().join(".cloister/credentials.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
    let endpoint = Endpoint::start(&store).await;
    let job = endpoint.job(BUCKET, &lasting);
    job.head(&path(INPUT)).await.unwrap();
    job.put(&path("out/after-restart.txt"), PutPayload::from_static(b"ok"))
        .await
        .unwrap();
    assert_refused(job.get(&path("in/secret.txt")).await, "scope after restart");
    // Expired ones are gone from the index after a restart: unknown, still refused.
    assert_refused(
        endpoint.job(BUCKET, &brief).head(&path(INPUT)).await,
        "expired credential after a restart",
    );
    let presigned = Presigner::new(
        &endpoint.url,
        "us-east-1",
        &brief.access_key_id,
        brief.secret_access_key(),
    )
    .presign(
        false,
        BUCKET,
        INPUT,
        Duration::from_secs(600),
        &http::HeaderMap::new(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(http.get(&presigned).send().await.unwrap().status(), 403);
    assert_refused(
        endpoint.job(BUCKET, &revoked).head(&path(INPUT)).await,
        "credential revoked before the restart",
    );
    endpoint.shut_down().await;
}

#[tokio::test]
async fn scopes_and_lifetimes_are_checked_when_issued() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
    let refused = store.issue_job_credential(scope(), Duration::ZERO, "zero").await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = store
        .issue_job_credential(scope(), Duration::from_secs(u64::MAX), "forever")
        .await;
    assert!(refused.is_err(), "{refused:?}");
    for folder in ["a//", "../", "a/./"] {
        let bad = JobScope {
            read: vec![],
            write: vec![ScopedFolder {
                bucket: BUCKET.into(),
                folder: folder.into(),
            }],
        };
        let refused = store
            .issue_job_credential(bad, Duration::from_secs(60), "bad")
            .await;
        assert!(refused.is_err(), "{folder}: {refused:?}");
    }
    let bad_bucket = JobScope {
        read: vec![ScopedObject {
            bucket: "No_Such..Name".into(),
            key: "k".into(),
        }],
        write: vec![],
    };
    assert!(
        store
            .issue_job_credential(bad_bucket, Duration::from_secs(60), "bad")
            .await
            .is_err()
    );
}

/// boto3 against the same endpoint: every operation a script could try with the credential.
#[tokio::test]
async fn boto3_is_refused_everything_outside_the_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated_store(dir.path()).await;
    let endpoint = Endpoint::start(&store).await;
    let job = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "py-job")
        .await
        .unwrap();
    let expired = store
        .issue_job_credential(scope(), Duration::from_secs(1), "py-expired")
        .await
        .unwrap();
    let revoked = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "py-revoked")
        .await
        .unwrap();
    store.revoke_job_credential(&revoked.access_key_id).await.unwrap();
    // Expiry is rounded up to the second: a 1 s credential is valid for up to 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/s3_job_credentials.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("CLOISTER_S3", &endpoint.url)
        .env("S3_ACCESS_KEY", ADMIN_KEY)
        .env("S3_SECRET_KEY", ADMIN_SECRET)
        .env("JOB_ACCESS_KEY", &job.access_key_id)
        .env("JOB_SECRET_KEY", job.secret_access_key())
        .env("EXPIRED_ACCESS_KEY", &expired.access_key_id)
        .env("EXPIRED_SECRET_KEY", expired.secret_access_key())
        .env("REVOKED_ACCESS_KEY", &revoked.access_key_id)
        .env("REVOKED_SECRET_KEY", revoked.secret_access_key())
        .output()
        .await
        .expect("python3 must be installed (see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 job-credential checks failed (is boto3 installed?):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    endpoint.shut_down().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}

/// What authorizing a job credential costs: small GETs signed with the administrator's key and
/// with a job credential, interleaved in rounds, plus issuing and revoking (one durable commit
/// each). A measurement, not a check: `cargo test --release -p cloister-storage --test
/// job_credentials -- --ignored --nocapture authorization_overhead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it on purpose"]
async fn authorization_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated_store(dir.path()).await;
    store
        .put_bytes(BUCKET, INPUT, vec![b'x'; 1024].into())
        .await
        .unwrap();
    let endpoint = Endpoint::start(&store).await;
    let credential = store
        .issue_job_credential(scope(), Duration::from_secs(3600), "bench")
        .await
        .unwrap();
    let clients = [
        ("admin", endpoint.admin(BUCKET)),
        ("job", endpoint.job(BUCKET, &credential)),
    ];
    let input = path(INPUT);
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..20 {
        for (i, (_, client)) in clients.iter().enumerate() {
            let start = std::time::Instant::now();
            for _ in 0..100 {
                client.get(&input).await.unwrap().bytes().await.unwrap();
            }
            if round > 0 {
                samples[i].push(start.elapsed() / 100);
            }
        }
    }
    for (i, (name, _)) in clients.iter().enumerate() {
        samples[i].sort();
        let median = samples[i][samples[i].len() / 2];
        println!("GET 1 KiB signed by {name}: median {median:?} per request");
    }
    let mut issue = Vec::new();
    let mut revoke = Vec::new();
    for _ in 0..50 {
        let start = std::time::Instant::now();
        let credential = store
            .issue_job_credential(scope(), Duration::from_secs(60), "bench")
            .await
            .unwrap();
        issue.push(start.elapsed());
        let start = std::time::Instant::now();
        store
            .revoke_job_credential(&credential.access_key_id)
            .await
            .unwrap();
        revoke.push(start.elapsed());
    }
    issue.sort();
    revoke.sort();
    println!(
        "issue: median {:?}, revoke: median {:?} (one commit each)",
        issue[issue.len() / 2],
        revoke[revoke.len() / 2]
    );
    endpoint.shut_down().await;
}
