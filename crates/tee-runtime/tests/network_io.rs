//! The runtime's network JobIo against the real S3 endpoint on a Unix socket (as the container
//! executor serves it to a job's container) and on TCP (as a pod would reach it), signing with
//! a real job credential: the job's input and outputs go through, anything else is refused by
//! the endpoint, and so is everything once the credential is revoked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_runtime::{JobIo, StorageAccess};
use cloister_storage::{JobCredential, JobScope, NoEvents, ScopedFolder, ScopedObject, Store};
use cloister_tee_runtime::s3::S3Io;

const ADMIN_KEY: &str = "admin-access";
const ADMIN_SECRET: &str = "admin-secret-0123456789";

async fn store(root: &Path) -> Store {
    let store = Store::open(root, Arc::new(NoEvents)).unwrap();
    for bucket in ["svc", "other"] {
        store.create_bucket(bucket, true).await.unwrap();
    }
    for (bucket, key) in [("svc", "in/a b+ü.txt"), ("svc", "in/secret.txt"), ("other", "x")] {
        store
            .put_bytes(bucket, key, format!("<{bucket}/{key}>").into())
            .await
            .unwrap();
    }
    store
}

fn scope() -> JobScope {
    JobScope {
        read: vec![ScopedObject {
            bucket: "svc".into(),
            key: "in/a b+ü.txt".into(),
        }],
        write: vec![ScopedFolder {
            bucket: "svc".into(),
            folder: "out".into(),
        }],
    }
}

fn access(endpoint: String, credential: &JobCredential) -> StorageAccess {
    StorageAccess {
        endpoint,
        region: "us-east-1".into(),
        access_key_id: credential.access_key_id.clone(),
        secret_access_key: credential.secret_access_key().to_owned(),
        expires: credential.expires,
    }
}

/// Serves the store's S3 endpoint on `listener` until the returned sender is dropped.
fn serve(
    store: &Store,
    listener: impl cloister_storage::listen::Listener,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cloister_storage::serve(
        listener,
        store.s3_service(ADMIN_KEY, ADMIN_SECRET),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    stop
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, cloister_runtime::IoError>, code: &str) {
    let error = result.expect_err("refused").to_string();
    assert!(error.contains(&format!("403 {code}")), "{error}");
}

/// An upload refused: the endpoint answers before reading the body and closes, so the client
/// sees its code or the connection closed under the body. Either way nothing is stored.
#[track_caller]
fn assert_upload_refused(result: Result<(), cloister_runtime::IoError>, code: &str) {
    let error = result.expect_err("refused").to_string();
    assert!(
        error.contains(&format!("403 {code}"))
            || error.contains("closed the connection while the file was sent"),
        "{error}"
    );
}

/// Fetches the input and uploads an output, then tries what the scope forbids.
async fn exercise(io: &S3Io, store: &Store, dir: &Path) {
    let input = dir.join("input");
    let expected = "<svc/in/a b+ü.txt>".as_bytes();
    assert_eq!(
        io.fetch("svc", "in/a b+ü.txt", &input).await.unwrap(),
        expected.len() as u64
    );
    assert_eq!(std::fs::read(&input).unwrap(), expected);
    // A large output crosses several body frames; its signed hash covers every byte.
    let output = dir.join("output");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&output, &big).unwrap();
    io.upload("svc", "out/result.bin", &output).await.unwrap();
    let stored = dir.join("stored");
    store.get_to_file("svc", "out/result.bin", &stored).await.unwrap();
    assert_eq!(std::fs::read(&stored).unwrap(), big);

    // Another object of the same folder, of another bucket; writes outside the folder.
    assert_refused(
        io.fetch("svc", "in/secret.txt", &dir.join("s")).await,
        "AccessDenied",
    );
    assert_refused(io.fetch("other", "x", &dir.join("o")).await, "AccessDenied");
    let input_before = store.head("svc", "in/a b+ü.txt").await.unwrap().unwrap();
    for (bucket, key) in [
        ("svc", "in/a b+ü.txt"),
        ("svc", "outside.txt"),
        ("svc", "out/../in/x"),
        ("other", "out/x"),
    ] {
        assert_upload_refused(io.upload(bucket, key, &output).await, "AccessDenied");
    }
    // A body of one byte, sent with its head, is refused the same way.
    let small = dir.join("small");
    std::fs::write(&small, b"x").unwrap();
    assert_upload_refused(io.upload("svc", "outside.txt", &small).await, "AccessDenied");
    for (bucket, key) in [("svc", "outside.txt"), ("svc", "out/../in/x"), ("other", "out/x")] {
        assert!(store.head(bucket, key).await.unwrap().is_none(), "{bucket}/{key}");
    }
    assert_eq!(
        store.head("svc", "in/a b+ü.txt").await.unwrap().unwrap().etag,
        input_before.etag
    );
    assert!(!dir.join("s").exists() && !dir.join("o").exists());
}

/// A confidential job's outputs, encrypted while they are sent: stored whole, opening for
/// their recipient at their own binding only; refused outside the scope with the endpoint's
/// own answer (the body waits for its `100 Continue`); and a body cut short, by a failing
/// producer or one that ends early, leaves nothing stored.
async fn exercise_sealed(io: &S3Io, store: &Store, dir: &Path) {
    use cloister_crypt::{Identity, ObjectBinding};
    let owner = Identity::generate();
    // Several chunks of the sealed format and a partial last one; and an empty output.
    for (name, len) in [("big", (3 << 20) + 5), ("empty", 0)] {
        let plain = dir.join(name);
        let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        std::fs::write(&plain, &content).unwrap();
        let key = format!("out/{name}.sealed");
        let sent = io
            .put_sealed(&plain, "svc", &key, &[owner.public()])
            .await
            .unwrap();
        let stored = dir.join(format!("{name}.stored"));
        store.get_to_file("svc", &key, &stored).await.unwrap();
        let sealed = std::fs::read(&stored).unwrap();
        assert_eq!(sealed.len() as u64, sent);
        let mut opened = Vec::new();
        cloister_crypt::decrypt(&sealed[..], &mut opened, &owner, &ObjectBinding::new("svc", &key)).unwrap();
        assert_eq!(opened, content);
        let moved = ObjectBinding::new("svc", "out/elsewhere");
        assert!(cloister_crypt::decrypt(&sealed[..], &mut Vec::new(), &owner, &moved).is_err());
    }

    // Outside the scope: the endpoint's answer itself, never a connection closed under a body.
    let error = io
        .put_sealed(&dir.join("big"), "svc", "outside.bin", &[owner.public()])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("403 AccessDenied"), "{error}");
    assert!(store.head("svc", "outside.bin").await.unwrap().is_none());

    // A producer that fails after a first frame, and one that ends short of the length.
    for fails in [true, false] {
        let (frames, body) = tokio::sync::mpsc::channel(4);
        let producer = tokio::spawn(async move {
            frames
                .send(Ok(bytes::Bytes::from(vec![7u8; 1 << 20])))
                .await
                .unwrap();
            if fails {
                frames
                    .send(Err(std::io::Error::other("the disk went away")))
                    .await
                    .unwrap();
            }
        });
        let key = format!("out/cut-{fails}");
        let result = io.put_stream("svc", &key, 2 << 20, body).await;
        producer.await.unwrap();
        assert!(result.is_err(), "{fails}");
        assert!(store.head("svc", &key).await.unwrap().is_none(), "{fails}");
    }
}

#[tokio::test]
async fn over_a_unix_socket_the_job_reaches_its_input_and_outputs_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("objects")).await;
    let socket = dir.path().join("s3.sock");
    let _stop = serve(&store, tokio::net::UnixListener::bind(&socket).unwrap());
    let credential = store
        .issue_job_credential(scope(), Duration::from_secs(600), "svc-job")
        .await
        .unwrap();
    let io = S3Io::new(&access(format!("unix://{}", socket.display()), &credential)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    exercise(&io, &store, &work).await;
    exercise_sealed(&io, &store, &work).await;

    // A wrong secret is not accepted.
    let mut forged = access(format!("unix://{}", socket.display()), &credential);
    forged.secret_access_key.push('x');
    let forged = S3Io::new(&forged).unwrap();
    assert_refused(
        forged.fetch("svc", "in/a b+ü.txt", &work.join("f")).await,
        "SignatureDoesNotMatch",
    );
    // Once the job has ended, its credential opens nothing.
    store
        .revoke_job_credential(&credential.access_key_id)
        .await
        .unwrap();
    assert_refused(
        io.fetch("svc", "in/a b+ü.txt", &work.join("late")).await,
        "InvalidAccessKeyId",
    );
    assert_upload_refused(
        io.upload("svc", "out/late", &work.join("output")).await,
        "InvalidAccessKeyId",
    );
    assert!(store.head("svc", "out/late").await.unwrap().is_none());
}

#[tokio::test]
async fn over_tcp_the_same_client_works_as_in_a_pod() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("objects")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let _stop = serve(&store, listener);
    let credential = store
        .issue_job_credential(scope(), Duration::from_secs(600), "svc-job")
        .await
        .unwrap();
    let io = S3Io::new(&access(endpoint, &credential)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    exercise(&io, &store, &work).await;
    exercise_sealed(&io, &store, &work).await;
}

#[tokio::test]
async fn an_absent_endpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let credential = StorageAccess {
        endpoint: format!("unix://{}/none.sock", dir.path().display()),
        region: "us-east-1".into(),
        access_key_id: "CJ00".into(),
        secret_access_key: "s".into(),
        expires: time::OffsetDateTime::now_utc(),
    };
    let io = S3Io::new(&credential).unwrap();
    let error = io
        .fetch("b", "k", &dir.path().join("x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot reach the storage endpoint"), "{error}");
    assert!(!error.contains("\"s\""), "{error}");
}
