//! Single-use, short-lived attestation nonces.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a nonce was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    /// Never issued, or already used.
    #[error("unknown or already used nonce")]
    Unknown,
    /// Issued too long ago.
    #[error("nonce expired")]
    Expired,
    /// Too many outstanding nonces.
    #[error("too many outstanding nonces; retry later")]
    Busy,
}

/// Issued nonces awaiting use.
pub struct Nonces {
    ttl: Duration,
    max_outstanding: usize,
    issued: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Nonces {
    /// Nonces valid for `ttl`, at most `max_outstanding` at once.
    pub fn new(ttl: Duration, max_outstanding: usize) -> Self {
        Self {
            ttl,
            max_outstanding,
            issued: Mutex::default(),
        }
    }

    /// Issues a fresh random nonce.
    pub fn issue(&self) -> Result<[u8; 32], NonceError> {
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce);
        let now = Instant::now();
        let mut issued = self.issued.lock().map_err(|_| NonceError::Busy)?;
        if issued.len() >= self.max_outstanding {
            issued.retain(|_, t| now.duration_since(*t) <= self.ttl);
            if issued.len() >= self.max_outstanding {
                return Err(NonceError::Busy);
            }
        }
        issued.insert(nonce, now);
        Ok(nonce)
    }

    /// Uses up a nonce: it is gone afterwards whether or not it was still valid.
    pub fn take(&self, nonce: &[u8]) -> Result<(), NonceError> {
        let key: [u8; 32] = nonce.try_into().map_err(|_| NonceError::Unknown)?;
        let issued_at = self
            .issued
            .lock()
            .map_err(|_| NonceError::Busy)?
            .remove(&key)
            .ok_or(NonceError::Unknown)?;
        if issued_at.elapsed() > self.ttl {
            Err(NonceError::Expired)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_expiry() {
        let nonces = Nonces::new(Duration::from_millis(50), 2);
        let a = nonces.issue().unwrap();
        assert_eq!(nonces.take(&a), Ok(()));
        assert_eq!(nonces.take(&a), Err(NonceError::Unknown));
        assert_eq!(nonces.take(&[0u8; 32]), Err(NonceError::Unknown));
        assert_eq!(nonces.take(b"short"), Err(NonceError::Unknown));
        let b = nonces.issue().unwrap();
        let _c = nonces.issue().unwrap();
        assert_eq!(nonces.issue(), Err(NonceError::Busy));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(nonces.take(&b), Err(NonceError::Expired));
        assert!(nonces.issue().is_ok(), "expired nonces must be purged when full");
    }
}
