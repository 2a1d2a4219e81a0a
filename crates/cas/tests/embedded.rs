//! The embedded development CAS (`cloister server --with-cas`): created on first start in its
//! own private directory, the host's simulated TEE registered by its administrator, `cas.json`
//! naming it; the same identity after a restart; and no start on a vault that needs shares.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cloister_attestation::SimPlatform;
use cloister_cas::embedded::{EmbeddedCas, EmbeddedCasConfig, EmbeddedCasError, start};
use cloister_cas_client::client::CasClient;
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{AuditEntry, SealingConfig, Vault};

fn config(root: &Path) -> EmbeddedCasConfig {
    EmbeddedCasConfig {
        data_dir: root.join("cas"),
        listen: "127.0.0.1:0".parse().unwrap(),
        sim_platform_key: root.join("sim-platform.key"),
    }
}

/// Starts again once the previous server's connections, which hold the database, are gone.
async fn restart(root: &Path) -> EmbeddedCas {
    let mut tries = 0;
    loop {
        match start(config(root)).await {
            Ok(cas) => return cas,
            Err(e @ EmbeddedCasError::Open { .. }) if tries == 50 => panic!("{e}"),
            Err(EmbeddedCasError::Open { .. }) => tries += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_creates_registers_and_names_it_and_a_restart_keeps_its_identity() {
    let root = tempfile::tempdir().unwrap();
    let cas = start(config(root.path())).await.unwrap();
    let dir = root.path().join("cas").canonicalize().unwrap();
    let message = cas.startup_message();
    assert!(message.contains("initialised a development CAS"), "{message}");
    assert!(
        message.contains(cas.url()) && message.contains(cas.pin()),
        "{message}"
    );
    assert_eq!(cas.admin_key(), dir.join("admin.key"));
    assert_eq!(mode(&dir), 0o700);

    let found: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cas.json")).unwrap()).unwrap();
    assert_eq!(found["url"], cas.url());
    assert_eq!(found["pin"], cas.pin());
    assert_eq!(found["admin_key"], cas.admin_key().to_str().unwrap());
    assert_eq!(mode(&dir.join("cas.json")), 0o600);

    let platform = SimPlatform::load_or_generate(&root.path().join("sim-platform.key")).unwrap();
    let admin = ClientIdentity::load(cas.admin_key()).unwrap();
    let client = CasClient::new(cas.url(), cas.pin(), Some(admin)).unwrap();
    let entries: Vec<AuditEntry> = client.audit(0).await.unwrap();
    let registered = entries
        .iter()
        .find(|e| e.kind == "platform-add")
        .expect("the host's platform is registered");
    assert_eq!(registered.subject, hex::encode(platform.public_key()));

    let pin = cas.pin().to_owned();
    // Its open connection would keep the server's state, and so the database, in use.
    drop(client);
    cas.shutdown().await;
    let again = restart(root.path()).await;
    assert_eq!(again.pin(), pin, "the same identity");
    assert!(
        !again.startup_message().contains("initialised"),
        "{}",
        again.startup_message()
    );
    again.shutdown().await;
}

#[tokio::test]
async fn a_vault_that_needs_shares_is_not_started() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cas");
    drop(
        Vault::init(
            &dir,
            SealingConfig::Shamir {
                shares: 2,
                threshold: 2,
            },
        )
        .unwrap(),
    );
    // A sealed CAS would wait for an unseal that never comes.
    let started = tokio::time::timeout(Duration::from_secs(30), start(config(root.path())))
        .await
        .expect("refused at once, not left waiting for shares");
    match started {
        Err(EmbeddedCasError::Sealed { .. }) => {}
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a Shamir vault was started as a development CAS"),
    }
    assert!(!dir.join("cas.json").exists());
    assert!(!dir.join("admin.key").exists());
}
