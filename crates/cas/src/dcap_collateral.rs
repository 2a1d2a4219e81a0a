//! Which DCAP collateral the CAS verifies an SGX or TDX quote against.
//!
//! The attesting host must not choose: every genuine Intel collateral verifies until its
//! `nextUpdate`, including collateral from before a TCB recovery or a PCK revocation. So the
//! CAS uses its own [`CollateralSource`] first and takes collateral from the request only when
//! it has no source or the source has nothing for the platform. Either way the collateral must
//! be no older, part by part, than the newest the CAS has seen ([`CollateralFloor`]); the floor
//! rises with every collateral that authenticates and is stored in the vault, durably, before
//! the collateral is used, so a restart cannot lower it. The source's own collateral is held to
//! the floor too: its cache or directory is on the host's disk and could be rolled back.

use std::sync::{PoisonError, RwLock};

use cloister_attestation::{CollateralFloor, CollateralSource, DcapCollateral, DcapVerifier};
use cloister_cas_store::{StoreError, Vault};
use time::OffsetDateTime;

/// The vault table holding the floor, as one record under [`FLOOR_KEY`].
const FLOOR_TABLE: &str = "dcap-collateral-floor";
const FLOOR_KEY: &str = "floor";

/// The CAS's collateral floor and the choice of collateral it guards.
#[derive(Default)]
pub(crate) struct CollateralChoice {
    floor: RwLock<CollateralFloor>,
}

fn stored_floor(bytes: Option<&[u8]>) -> Result<CollateralFloor, StoreError> {
    bytes.map_or(Ok(CollateralFloor::new()), |b| {
        serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("DCAP collateral floor: {e}")))
    })
}

impl CollateralChoice {
    /// Raises the floor in memory to the one in the vault (at start and at every unseal). A
    /// stored floor that cannot be read is an error, never an empty floor.
    pub(crate) fn load(&self, vault: &Vault) -> Result<(), StoreError> {
        let stored = stored_floor(vault.get(FLOOR_TABLE, FLOOR_KEY)?.as_deref().map(Vec::as_slice))?;
        self.floor
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(&stored);
        Ok(())
    }

    /// The collateral to verify `quote` against at `now`: the source's, else the request's,
    /// else none (the verifier then reports missing collateral). `Err` is the refusal reason.
    pub(crate) fn choose(
        &self,
        vault: &Vault,
        verifier: &DcapVerifier,
        source: Option<&CollateralSource>,
        requested: Option<&serde_json::Value>,
        quote: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<DcapCollateral>, String> {
        let collateral = match source.map(|s| (s, s.collateral_for(quote, now))) {
            Some((source, Ok(own))) => self.own_or_refreshed(source, own, quote, now)?,
            Some((_, Err(unavailable))) => match requested {
                Some(json) => self.requested(json)?,
                None => return Err(format!("no collateral for this platform: {unavailable}")),
            },
            None => match requested {
                Some(json) => self.requested(json)?,
                None => return Ok(None),
            },
        };
        self.observe(vault, verifier, quote, &collateral, now)?;
        Ok(Some(collateral))
    }

    fn check(&self, collateral: &DcapCollateral) -> Result<(), String> {
        self.floor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check(collateral)
            .map_err(|e| e.to_string())
    }

    /// The source's collateral, or a fresh copy when it is older than the floor. The request's
    /// collateral is no substitute here: the CAS's own copy was delivered, and something in it
    /// may be newer than anything the request brings (a CRL that revokes this very platform).
    fn own_or_refreshed(
        &self,
        source: &CollateralSource,
        own: DcapCollateral,
        quote: &[u8],
        now: OffsetDateTime,
    ) -> Result<DcapCollateral, String> {
        let Err(stale) = self.check(&own) else {
            return Ok(own);
        };
        match source.refresh(quote, now) {
            Ok(fresh) => self.check(&fresh).map(|()| fresh),
            Err(e) => Err(format!("{stale} (and fetching fresh collateral failed: {e})")),
        }
    }

    fn requested(&self, json: &serde_json::Value) -> Result<DcapCollateral, String> {
        let raw = serde_json::to_vec(json).map_err(|_| "malformed collateral".to_owned())?;
        let collateral = DcapCollateral::from_json(&raw).map_err(|e| format!("collateral: {e}"))?;
        self.check(&collateral)?;
        Ok(collateral)
    }

    /// Raises the floor to `collateral` once all of it authenticates, storing the new floor
    /// durably before anything relies on it. Collateral that does not authenticate raises
    /// nothing and is left to the quote's verification to refuse, with its reason.
    fn observe(
        &self,
        vault: &Vault,
        verifier: &DcapVerifier,
        quote: &[u8],
        collateral: &DcapCollateral,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let Ok(verified) = verifier.verify_collateral(quote, collateral, now) else {
            return Ok(());
        };
        let mut probe = self.floor.read().unwrap_or_else(PoisonError::into_inner).clone();
        if !probe.observe(&verified) {
            return Ok(());
        }
        let mut floor = self.floor.write().unwrap_or_else(PoisonError::into_inner);
        let mut raised = floor.clone();
        if !raised.observe(&verified) {
            // Another attestation stored the same rise meanwhile.
            return Ok(());
        }
        let stored = vault
            .write(|txn| {
                let mut stored =
                    stored_floor(txn.get(FLOOR_TABLE, FLOOR_KEY)?.as_deref().map(Vec::as_slice))?;
                stored.merge(&raised);
                let bytes = serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                txn.put(FLOOR_TABLE, FLOOR_KEY, &bytes)?;
                Ok(stored)
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot store the DCAP collateral floor");
                "cannot store the DCAP collateral floor".to_owned()
            })?;
        *floor = stored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use base64::Engine as _;
    use cloister_attestation::{Endorsements, EvidenceVerifier as _};
    use cloister_cas_store::{InitOutput, SealingConfig};
    use time::macros::datetime;

    use super::*;
    use crate::server::{CasConfig, serve};
    use cloister_cas_client::client::{CasClient, ClientError, LocalClient};
    use cloister_cas_client::protocol::AttestRequest;
    use cloister_cas_client::sign::ClientIdentity;

    const TDX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/tdx/quote.bin");
    const TDX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/tdx/collateral.json");
    const TDX_OUTDATED_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/tdx/quote-outdated-tcb.bin");
    const TDX_OUTDATED_COLLATERAL: &[u8] =
        include_bytes!("../../attestation/testdata/tdx/collateral-outdated-tcb.json");
    const SGX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/sgx/collateral.json");
    /// Inside the windows of the 2025 vectors, and of the 2026 one.
    const AT_2025: OffsetDateTime = datetime!(2025-07-01 00:00:00 UTC);
    const AT_2026: OffsetDateTime = datetime!(2026-03-01 00:00:00 UTC);
    /// What the 2025 TDX collateral is refused with once the 2026 one was seen.
    const REFUSAL: &str = "collateral for TDX FMSPC B0C06F000000 is older than collateral already seen: \
                           QE identity TD_QE evaluation number 17 < 18";

    fn json(collateral: &[u8]) -> serde_json::Value {
        serde_json::from_slice(collateral).unwrap()
    }

    fn digest(collateral: &[u8]) -> [u8; 32] {
        DcapCollateral::from_json(collateral).unwrap().digest()
    }

    fn key_file_vault(dir: &Path) -> Vault {
        Vault::init(dir, SealingConfig::KeyFile(dir.join("master.key")))
            .unwrap()
            .0
    }

    /// An offline collateral directory holding `collateral` for the platform of each quote.
    fn offline(files: &[(&[u8], &[u8])]) -> (tempfile::TempDir, CollateralSource) {
        let dir = tempfile::tempdir().unwrap();
        for (quote, collateral) in files {
            let key = CollateralSource::cache_key(quote).unwrap();
            std::fs::write(dir.path().join(format!("{key}.json")), collateral).unwrap();
        }
        let source = CollateralSource::offline(dir.path()).unwrap();
        (dir, source)
    }

    struct Cas {
        vault: Vault,
        verifier: DcapVerifier,
        choice: CollateralChoice,
    }

    impl Cas {
        fn new(vault: Vault) -> Self {
            let choice = CollateralChoice::default();
            choice.load(&vault).unwrap();
            Cas {
                vault,
                verifier: DcapVerifier::new(),
                choice,
            }
        }

        fn choose(
            &self,
            source: Option<&CollateralSource>,
            requested: Option<&[u8]>,
            quote: &[u8],
            at: OffsetDateTime,
        ) -> Result<[u8; 32], String> {
            let requested = requested.map(json);
            let chosen =
                self.choice
                    .choose(&self.vault, &self.verifier, source, requested.as_ref(), quote, at)?;
            Ok(chosen.expect("collateral").digest())
        }
    }

    #[test]
    fn the_cas_source_wins_over_collateral_in_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::new(key_file_vault(dir.path()));
        let (_files, source) = offline(&[(TDX_QUOTE, TDX_COLLATERAL)]);
        // Whatever the host sends — newer genuine collateral of another platform, another
        // TEE's, or the same — the CAS's own file is what the quote is verified against.
        for requested in [TDX_OUTDATED_COLLATERAL, SGX_COLLATERAL, TDX_COLLATERAL] {
            let chosen = cas
                .choose(Some(&source), Some(requested), TDX_QUOTE, AT_2025)
                .unwrap();
            assert_eq!(chosen, digest(TDX_COLLATERAL));
        }
        let own = source.collateral_for(TDX_QUOTE, AT_2025).unwrap();
        let verified = cas
            .verifier
            .verify(TDX_QUOTE, &Endorsements::Dcap(own), AT_2025)
            .unwrap();
        assert_eq!(verified.tcb_status, "UpToDate");

        // Without a file for the platform, the request's collateral is the fallback; without
        // either, there is nothing and the reason says why.
        let (_none, empty) = offline(&[]);
        let chosen = cas
            .choose(Some(&empty), Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
            .unwrap();
        assert_eq!(chosen, digest(TDX_COLLATERAL));
        let e = cas.choose(Some(&empty), None, TDX_QUOTE, AT_2025).unwrap_err();
        assert!(e.starts_with("no collateral for this platform: "), "{e}");
        let none = cas
            .choice
            .choose(&cas.vault, &cas.verifier, None, None, TDX_QUOTE, AT_2025)
            .unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn older_request_collateral_is_refused_once_newer_was_seen_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (_files, source) = offline(&[(TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL)]);
        {
            let cas = Cas::new(key_file_vault(dir.path()));
            // The source has nothing for this platform: the request's 2025 collateral is taken.
            let chosen = cas
                .choose(Some(&source), Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
                .unwrap();
            assert_eq!(chosen, digest(TDX_COLLATERAL));
            // Another platform's attestation brings in the 2026 collateral from the source
            // (the request's older collateral is ignored there).
            let chosen = cas
                .choose(Some(&source), Some(TDX_COLLATERAL), TDX_OUTDATED_QUOTE, AT_2026)
                .unwrap();
            assert_eq!(chosen, digest(TDX_OUTDATED_COLLATERAL));
            // The same request as at first, at the same time: now refused, source or not.
            for source in [Some(&source), None] {
                let e = cas
                    .choose(source, Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
                    .unwrap_err();
                assert!(e.starts_with(REFUSAL), "{e}");
                assert!(
                    e.ends_with(
                        "PCK CRL (platform CA) thisUpdate 2025-06-19T10:00:35Z < 2026-02-18T10:41:15Z"
                    ),
                    "{e}"
                );
            }
        }
        // Restart: the floor comes back from the vault.
        let cas = Cas::new(Vault::open(dir.path(), None).unwrap());
        let e = cas
            .choose(None, Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
            .unwrap_err();
        assert!(e.starts_with(REFUSAL), "{e}");
        // Control: without the stored floor the very same request passes.
        let other = tempfile::tempdir().unwrap();
        let fresh = Cas::new(key_file_vault(other.path()));
        fresh
            .choose(None, Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
            .unwrap();
    }

    #[test]
    fn stale_collateral_from_the_source_is_refused_and_not_replaced_by_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::new(key_file_vault(dir.path()));
        // An offline directory filled at two different times (or rolled back on disk).
        let (_files, source) = offline(&[
            (TDX_QUOTE, TDX_COLLATERAL),
            (TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL),
        ]);
        cas.choose(Some(&source), None, TDX_OUTDATED_QUOTE, AT_2026)
            .unwrap();
        let e = cas
            .choose(Some(&source), Some(TDX_OUTDATED_COLLATERAL), TDX_QUOTE, AT_2025)
            .unwrap_err();
        assert!(e.starts_with(REFUSAL), "{e}");
    }

    #[test]
    fn collateral_that_does_not_authenticate_raises_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::new(key_file_vault(dir.path()));
        // A request whose TD_QE identity claims evaluation number 18 without Intel's signature:
        // chosen (its quote verification will fail), but it must not lock out the genuine 17.
        let mut forged = json(TDX_COLLATERAL);
        let qe = forged["qe_identity"]
            .as_str()
            .unwrap()
            .replace("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18");
        forged["qe_identity"] = serde_json::Value::String(qe);
        let forged = serde_json::to_vec(&forged).unwrap();
        cas.choose(None, Some(&forged), TDX_QUOTE, AT_2025).unwrap();
        assert!(cas.vault.get(FLOOR_TABLE, FLOOR_KEY).unwrap().is_none());
        cas.choose(None, Some(TDX_COLLATERAL), TDX_QUOTE, AT_2025)
            .unwrap();
        assert!(cas.vault.get(FLOOR_TABLE, FLOOR_KEY).unwrap().is_some());
    }

    #[test]
    fn a_corrupt_stored_floor_is_an_error_not_an_empty_floor() {
        let dir = tempfile::tempdir().unwrap();
        let vault = key_file_vault(dir.path());
        vault
            .write(|txn| txn.put(FLOOR_TABLE, FLOOR_KEY, b"{\"root_ca_crl\":\"soon\"}"))
            .unwrap();
        assert!(CollateralChoice::default().load(&vault).is_err());
    }

    /// The whole CAS: a floor raised before a restart, loaded at unseal, refuses the older
    /// collateral of a real attestation request over TLS, and the refusal is audited.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_cas_refuses_older_request_collateral_and_audits_it() {
        let dir = tempfile::tempdir().unwrap();
        let shares = {
            let (vault, output) = Vault::init(
                dir.path(),
                SealingConfig::Shamir {
                    shares: 2,
                    threshold: 2,
                },
            )
            .unwrap();
            let InitOutput::Shares(shares) = output else {
                panic!("Shamir init gives shares")
            };
            let cas = Cas::new(vault);
            cas.choose(None, Some(TDX_OUTDATED_COLLATERAL), TDX_OUTDATED_QUOTE, AT_2026)
                .unwrap();
            shares
        };

        let (refusal, audit) = attest_once(dir.path(), Some(&shares)).await;
        assert!(refusal.starts_with(REFUSAL), "{refusal}");
        assert!(
            audit
                .iter()
                .any(|(kind, reason)| kind == "attest-fail" && reason == &refusal),
            "{audit:?}"
        );

        // A vault that opens unsealed loads its floor when the CAS starts.
        let unsealed = tempfile::tempdir().unwrap();
        Cas::new(key_file_vault(unsealed.path()))
            .choose(None, Some(TDX_OUTDATED_COLLATERAL), TDX_OUTDATED_QUOTE, AT_2026)
            .unwrap();
        let (refusal, _) = attest_once(unsealed.path(), None).await;
        assert!(refusal.starts_with(REFUSAL), "{refusal}");

        // Control: a CAS that never saw the newer collateral does not refuse it for its age
        // (the wall clock is past the 2025 vector's window, so it fails later, as expired).
        let other = tempfile::tempdir().unwrap();
        drop(key_file_vault(other.path()));
        let (refusal, _) = attest_once(other.path(), None).await;
        assert!(!refusal.contains("older than collateral"), "{refusal}");
        assert!(refusal.contains("expired"), "{refusal}");
    }

    /// Starts the CAS on the vault in `dir` (unsealing it with `shares`), sends one attestation
    /// of the 2025 TDX quote with its collateral, and returns the refusal and the audit log's
    /// (kind, reason) pairs.
    async fn attest_once(
        dir: &Path,
        shares: Option<&[cloister_cas_store::Share]>,
    ) -> (String, Vec<(String, String)>) {
        let admin = ClientIdentity::generate();
        let config = CasConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_names: Vec::new(),
            admins: vec![admin.public()],
            nonce_ttl: Duration::from_secs(60),
            collateral: None,
            refusal_audit: Default::default(),
            governance: Default::default(),
        };
        let vault = Arc::new(Vault::open(dir, None).unwrap());
        let pin = crate::tls::pin_of(&vault.identity_public().unwrap());
        let mut running = serve(config, vault).await.unwrap();
        let local = LocalClient::new(dir).unwrap();
        for share in shares.unwrap_or_default() {
            local.unseal(&share.to_string()).await.unwrap();
        }
        let addr = running.network_addr().await.unwrap();
        let client = CasClient::new(&format!("https://{addr}"), &pin, Some(admin)).unwrap();
        let nonce = client.nonce().await.unwrap();
        let request = AttestRequest {
            session: "s".into(),
            service: "svc".into(),
            nonce: nonce.nonce,
            public_key: hex::encode([7u8; 32]),
            evidence: base64::engine::general_purpose::STANDARD.encode(TDX_QUOTE),
            collateral: Some(json(TDX_COLLATERAL)),
            vcek: None,
            chain: None,
        };
        let refusal = match client.attest_raw(&request).await {
            Err(ClientError::Refused { status, message }) => {
                assert_eq!(status, 403);
                message
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        let audit = client
            .audit::<cloister_cas_store::AuditEntry>(1)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                let reason = e.detail["reason"].as_str().unwrap_or_default().to_owned();
                (e.kind, reason)
            })
            .collect();
        running.shutdown().await;
        (refusal, audit)
    }
}
