//! Attestation nonces that cost the CAS nothing until they are used.
//!
//! Issuing a nonce stores nothing, so no number of unauthenticated nonce requests can exhaust
//! anything. A nonce is 32 bytes:
//!
//! ```text
//! issued (8, big-endian milliseconds on this process's monotonic clock)
//! ‖ random (16)
//! ‖ tag (8) = HMAC-SHA256(key, issued ‖ random), truncated
//! ```
//!
//! `key` is drawn at random when the process starts and never leaves it, so only this process
//! mints nonces that verify, and a restart invalidates every outstanding nonce. The issue time
//! comes from the monotonic clock, which the host cannot turn back. A 64-bit tag leaves an
//! online forger one chance in 2^64 per request; the 32-byte length is the one clients have
//! always seen, and report data hashes the nonce and the key unseparated, so a fixed length
//! keeps that concatenation unambiguous.
//!
//! The only state is the set of nonces already *used*, each kept until it expires. A nonce is
//! used only by evidence that verified and binds it ([`Nonces::consume`]), so the set grows
//! with genuine attestations, never with junk.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, hmac};

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 32;
const ISSUED_LEN: usize = 8;
const RANDOM_LEN: usize = 16;
const SIGNED_LEN: usize = ISSUED_LEN + RANDOM_LEN;
const TAG_LEN: usize = NONCE_LEN - SIGNED_LEN;

/// Why a nonce was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    /// Not 32 bytes of hex.
    #[error("malformed nonce")]
    Malformed,
    /// Its tag does not verify: never issued by this CAS process (possibly issued before it
    /// restarted).
    #[error("unknown nonce: not issued by this CAS, or issued before it restarted")]
    Unknown,
    /// Issued too long ago.
    #[error("nonce expired")]
    Expired,
    /// Already used by an attestation.
    #[error("nonce already used")]
    Used,
}

/// Issues and checks nonces (see the module documentation).
pub struct Nonces {
    key: hmac::Key,
    epoch: Instant,
    ttl: Duration,
    used: Mutex<UsedNonces>,
}

/// Nonces consumed and not yet expired, with their expiry in consumption order so the
/// expired ones can be dropped from the front.
#[derive(Default)]
struct UsedNonces {
    set: HashSet<[u8; NONCE_LEN]>,
    by_expiry: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl UsedNonces {
    /// Drops the nonces expired at `now_ms`. The queue is in consumption order, which is
    /// issue order give or take one TTL, so an expired entry may wait behind a younger one
    /// for at most one TTL: the set stays within two TTLs' worth of attestations.
    fn prune(&mut self, now_ms: u64) {
        while let Some(&(expires, nonce)) = self.by_expiry.front() {
            if expires >= now_ms {
                break;
            }
            self.by_expiry.pop_front();
            self.set.remove(&nonce);
        }
    }
}

/// A nonce that passed the cheap checks of [`Nonces::check`]: authentic, unexpired, unused.
#[derive(Debug, Clone, Copy)]
pub struct FreshNonce {
    bytes: [u8; NONCE_LEN],
    expires_ms: u64,
}

impl FreshNonce {
    /// The nonce's bytes.
    pub fn bytes(&self) -> &[u8; NONCE_LEN] {
        &self.bytes
    }
}

impl Nonces {
    /// Nonces valid for `ttl` under a fresh random key.
    pub fn new(ttl: Duration) -> Self {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::fill(&mut key[..]);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key[..]),
            epoch: Instant::now(),
            ttl,
            used: Mutex::default(),
        }
    }

    /// How long a nonce stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn tag(&self, signed: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, signed)
    }

    /// A fresh nonce. Stores nothing.
    pub fn issue(&self) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..ISSUED_LEN].copy_from_slice(&self.now_ms().to_be_bytes());
        rand::fill(&mut nonce[ISSUED_LEN..SIGNED_LEN]);
        let tag = self.tag(&nonce[..SIGNED_LEN]);
        nonce[SIGNED_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        nonce
    }

    /// The cheap checks, in this order: length, tag (compared in constant time), expiry, not
    /// used yet. Marks nothing: call [`Nonces::consume`] once the evidence proved authentic.
    pub fn check(&self, nonce: &[u8]) -> Result<FreshNonce, NonceError> {
        let bytes: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| NonceError::Malformed)?;
        let tag = self.tag(&bytes[..SIGNED_LEN]);
        constant_time::verify_slices_are_equal(&tag.as_ref()[..TAG_LEN], &bytes[SIGNED_LEN..])
            .map_err(|_| NonceError::Unknown)?;
        let mut issued = [0u8; ISSUED_LEN];
        issued.copy_from_slice(&bytes[..ISSUED_LEN]);
        let expires_ms = u64::from_be_bytes(issued).saturating_add(self.ttl_ms());
        if self.now_ms() > expires_ms {
            return Err(NonceError::Expired);
        }
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.set.contains(&bytes) {
            return Err(NonceError::Used);
        }
        Ok(FreshNonce { bytes, expires_ms })
    }

    /// Marks a checked nonce used; fails if a concurrent attestation used it first. It stays
    /// marked until it expires (after which [`Nonces::check`] refuses it as expired).
    pub fn consume(&self, fresh: &FreshNonce) -> Result<(), NonceError> {
        let now_ms = self.now_ms();
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.prune(now_ms);
        if !used.set.insert(fresh.bytes) {
            return Err(NonceError::Used);
        }
        used.by_expiry.push_back((fresh.expires_ms, fresh.bytes));
        Ok(())
    }

    /// How many used nonces are remembered.
    pub fn used_count(&self) -> usize {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuing_stores_nothing_and_every_nonce_is_unique() {
        let nonces = Nonces::new(Duration::from_secs(60));
        let issued: HashSet<_> = (0..200_000).map(|_| nonces.issue()).collect();
        assert_eq!(issued.len(), 200_000);
        assert_eq!(nonces.used_count(), 0);
        for nonce in issued.iter().take(1000) {
            assert!(nonces.check(nonce).is_ok());
        }
    }

    #[test]
    fn a_nonce_is_used_once() {
        let nonces = Nonces::new(Duration::from_secs(60));
        let nonce = nonces.issue();
        let fresh = nonces.check(&nonce).unwrap();
        assert_eq!(fresh.bytes(), &nonce);
        // Checking marks nothing: junk evidence with a valid nonce leaves it usable.
        let again = nonces.check(&nonce).unwrap();
        nonces.consume(&fresh).unwrap();
        assert_eq!(nonces.check(&nonce).unwrap_err(), NonceError::Used);
        // Two attestations that both passed the check before either consumed: one wins.
        assert_eq!(nonces.consume(&again).unwrap_err(), NonceError::Used);
        assert_eq!(nonces.used_count(), 1);
    }

    #[test]
    fn forged_tampered_and_malformed_nonces_are_refused() {
        let nonces = Nonces::new(Duration::from_secs(60));
        let nonce = nonces.issue();
        for i in 0..NONCE_LEN {
            let mut tampered = nonce;
            tampered[i] ^= 1;
            assert_eq!(
                nonces.check(&tampered).unwrap_err(),
                NonceError::Unknown,
                "byte {i}"
            );
        }
        assert_eq!(nonces.check(&[0u8; 32]).unwrap_err(), NonceError::Unknown);
        assert_eq!(nonces.check(&nonce[..31]).unwrap_err(), NonceError::Malformed);
        assert_eq!(nonces.check(&[0u8; 33]).unwrap_err(), NonceError::Malformed);
        // Another process (a restarted CAS) has another key.
        let restarted = Nonces::new(Duration::from_secs(60));
        assert_eq!(restarted.check(&nonce).unwrap_err(), NonceError::Unknown);
        assert!(restarted.check(&restarted.issue()).is_ok());
    }

    #[test]
    fn nonces_expire_and_used_ones_are_forgotten_after_expiry() {
        let nonces = Nonces::new(Duration::from_millis(40));
        let used = nonces.issue();
        let unused = nonces.issue();
        nonces.consume(&nonces.check(&used).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(nonces.check(&unused).unwrap_err(), NonceError::Expired);
        assert_eq!(nonces.check(&used).unwrap_err(), NonceError::Expired);
        let later = nonces.issue();
        nonces.consume(&nonces.check(&later).unwrap()).unwrap();
        assert_eq!(nonces.used_count(), 1, "the expired used nonce must be dropped");
    }
}
