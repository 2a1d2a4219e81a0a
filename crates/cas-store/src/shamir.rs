//! Shamir secret sharing of the master key, byte-wise over GF(256) (vsss-rs).
//!
//! A share is the polynomial's value at a non-zero point `x` (the share number, 1..=n) for each
//! of the key's 32 bytes. Any `threshold` shares determine the key; fewer reveal nothing about
//! it. Every share of one split carries the same random 4-byte *set id*, so a share from another
//! split (another vault, or an earlier init) is recognised before any arithmetic is done.
//!
//! Text form (`Display` / `FromStr`):
//!
//! ```text
//! cloister-share-<x>-of-<n>-t<threshold>-<set id: 8 hex>-<value: 64 hex>-<checksum: 8 hex>
//! ```
//!
//! The checksum is the first 4 bytes of SHA-256 over a domain label and every other field, so a
//! mistyped digit anywhere (including in `x`, `n` or the threshold) is refused with a clear
//! error instead of silently producing a wrong key. It is a typo check, not an authenticator:
//! the vault's key check value is what finally decides whether recombined shares are right.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vsss_rs::Gf256;
use zeroize::{Zeroize, Zeroizing};

use crate::StoreError;
use crate::crypto::{MASTER_KEY_LEN, MasterKey, fill_random};

const PREFIX: &str = "cloister-share";
const CHECKSUM_DOMAIN: &[u8] = b"cloister-share-v1";

/// One Shamir share of the master key.
///
/// Give it to exactly one key holder as its text form (`to_string()`); parse it back with
/// `str::parse`. The share value is wiped on drop and `Debug` does not show it.
#[derive(Clone)]
pub struct Share {
    index: u8,
    shares: u8,
    threshold: u8,
    set: [u8; 4],
    value: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl Share {
    /// The share number (the evaluation point, 1..=`shares`).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// How many shares the split produced.
    pub fn shares(&self) -> u8 {
        self.shares
    }

    /// How many shares are needed to recover the key.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The split's identifier, shared by all shares of one split (8 hex digits).
    pub fn set_id(&self) -> String {
        hex::encode(self.set)
    }

    pub(crate) fn set_bytes(&self) -> [u8; 4] {
        self.set
    }

    /// Whether two shares are the same share (same split, number and value); constant time in
    /// the value.
    pub(crate) fn same_as(&self, other: &Share) -> bool {
        self.index == other.index
            && self.shares == other.shares
            && self.threshold == other.threshold
            && self.set == other.set
            && bool::from(self.value.ct_eq(&*other.value))
    }

    fn checksum(&self) -> [u8; 4] {
        let mut h = Sha256::new();
        h.update(CHECKSUM_DOMAIN);
        h.update([self.index, self.shares, self.threshold]);
        h.update(self.set);
        h.update(self.value.as_slice());
        let digest = h.finalize();
        let mut out = [0u8; 4];
        out.copy_from_slice(&digest[..4]);
        out
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("index", &self.index)
            .field("shares", &self.shares)
            .field("threshold", &self.threshold)
            .field("set", &self.set_id())
            .field("value", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = Zeroizing::new(hex::encode(self.value.as_slice()));
        write!(
            f,
            "{PREFIX}-{}-of-{}-t{}-{}-{}-{}",
            self.index,
            self.shares,
            self.threshold,
            hex::encode(self.set),
            value.as_str(),
            hex::encode(self.checksum())
        )
    }
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::BadShare(msg.into())
}

fn parse_u8(field: &str, what: &str) -> Result<u8, StoreError> {
    if field.is_empty() || field.len() > 3 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("the {what} is not a number from 1 to 255")));
    }
    field
        .parse::<u8>()
        .map_err(|_| bad(format!("the {what} is not a number from 1 to 255")))
}

fn parse_hex<const N: usize>(field: &str, what: &str, out: &mut [u8; N]) -> Result<(), StoreError> {
    if field.len() != 2 * N {
        return Err(bad(format!(
            "the {what} must be {} hex digits, found {}",
            2 * N,
            field.len()
        )));
    }
    hex::decode_to_slice(field, out).map_err(|_| bad(format!("the {what} contains a non-hex character")))
}

impl FromStr for Share {
    type Err = StoreError;

    /// Parses the text form. Whitespace anywhere (line breaks from copy and paste) is ignored
    /// and hex is case-insensitive. Error messages never repeat the input, since it is secret.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let compact: Zeroizing<String> = Zeroizing::new(
            s.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        );
        let rest = compact
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(|| bad(format!("a share starts with \"{PREFIX}-\"")))?;
        let fields: Vec<&str> = rest.split('-').collect();
        let [index, of, shares, threshold, set, value, check] = fields.as_slice() else {
            return Err(bad(format!(
                "expected {PREFIX}-<n>-of-<n>-t<n>-<set>-<value>-<checksum>, found {} dash-separated fields after the prefix instead of 7",
                fields.len()
            )));
        };
        if *of != "of" {
            return Err(bad("expected \"-of-\" after the share number"));
        }
        let index = parse_u8(index, "share number")?;
        let shares = parse_u8(shares, "share count")?;
        let threshold = threshold
            .strip_prefix('t')
            .ok_or_else(|| bad("expected the threshold as \"t<n>\""))?;
        let threshold = parse_u8(threshold, "threshold")?;
        let mut set_bytes = [0u8; 4];
        parse_hex(set, "set id", &mut set_bytes)?;
        let mut value_bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        parse_hex(value, "share value", &mut value_bytes)?;
        let mut check_bytes = [0u8; 4];
        parse_hex(check, "checksum", &mut check_bytes)?;
        let share = Share {
            index,
            shares,
            threshold,
            set: set_bytes,
            value: value_bytes,
        };
        // Checked before the range checks: a digit typo in the header is far likelier than a
        // well-formed share with impossible numbers, and "mistyped" is the useful answer.
        if share.checksum() != check_bytes {
            return Err(bad(
                "checksum mismatch: the share was mistyped or truncated; re-enter it exactly as it was printed",
            ));
        }
        if !(2..=shares).contains(&threshold) || index == 0 || index > shares {
            return Err(bad(format!(
                "inconsistent numbers: share {index} of {shares} with threshold {threshold}"
            )));
        }
        Ok(share)
    }
}

/// Adapts aws-lc's CSPRNG to the `rand_core` 0.10 interface vsss-rs asks for. That interface
/// cannot fail, so a (practically impossible) failure is remembered and reported after the
/// split instead of panicking.
struct SystemRng {
    failed: bool,
}

impl rand_core::TryRng for SystemRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        if fill_random(dst).is_err() {
            self.failed = true;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SystemRng {}

fn wipe(shares: &mut [Vec<u8>]) {
    for s in shares.iter_mut() {
        s.zeroize();
    }
}

/// Splits the master key into `shares` shares, any `threshold` of which recover it.
///
/// Requires `2 <= threshold <= shares <= 255`. A threshold of 1 is refused: every "share" would
/// then be the key itself, which defeats the purpose of splitting; a single operator who is
/// meant to hold the whole key should use key-file or TEE sealing instead.
pub fn split(key: &MasterKey, shares: u8, threshold: u8) -> Result<Vec<Share>, StoreError> {
    if threshold < 2 || threshold > shares {
        return Err(StoreError::InvalidArgument(format!(
            "need 2 <= threshold <= shares <= 255, got threshold {threshold} of {shares} shares"
        )));
    }
    let mut set = [0u8; 4];
    fill_random(&mut set)?;
    let mut rng = SystemRng { failed: false };
    let mut raw = Gf256::split_bytes(
        usize::from(threshold),
        usize::from(shares),
        key.as_bytes(),
        &mut rng,
    )
    .map_err(|e| StoreError::Crypto(vsss_error(e)))?;
    if rng.failed {
        wipe(&mut raw);
        return Err(StoreError::Crypto("random number generation failed"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for r in &raw {
        let mut value = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        match r.split_first() {
            Some((&index, bytes)) if index != 0 && bytes.len() == MASTER_KEY_LEN => {
                value.copy_from_slice(bytes);
                out.push(Share {
                    index,
                    shares,
                    threshold,
                    set,
                    value,
                });
            }
            _ => {
                wipe(&mut raw);
                return Err(StoreError::Crypto("secret sharing produced a malformed share"));
            }
        }
    }
    wipe(&mut raw);
    Ok(out)
}

/// Recombines the master key from shares of one split.
///
/// Exact duplicates are ignored. Refused with [`StoreError::BadShare`]: no shares, shares of
/// different splits (set id, count or threshold differ), two different values for one share
/// number, and fewer distinct shares than the threshold. Whether the result is the *right* key
/// can only be told by the vault (its key check value): a share altered in a way that keeps its
/// checksum valid yields a wrong key, not an error here.
pub fn combine(shares: &[Share]) -> Result<MasterKey, StoreError> {
    let first = shares.first().ok_or_else(|| bad("no shares given"))?;
    let mut distinct: Vec<&Share> = Vec::with_capacity(shares.len());
    for s in shares {
        if s.set != first.set {
            return Err(bad(format!(
                "shares come from different splits (set {} and set {})",
                first.set_id(),
                s.set_id()
            )));
        }
        if s.shares != first.shares || s.threshold != first.threshold {
            return Err(bad(format!(
                "shares disagree on the split: {} of {} (threshold {}) and {} of {} (threshold {})",
                first.index, first.shares, first.threshold, s.index, s.shares, s.threshold
            )));
        }
        match distinct.iter().find(|d| d.index == s.index) {
            Some(d) if d.same_as(s) => {}
            Some(_) => {
                return Err(bad(format!("two different values given for share {}", s.index)));
            }
            None => distinct.push(s),
        }
    }
    let needed = usize::from(first.threshold);
    if distinct.len() < needed {
        return Err(bad(format!(
            "{} distinct share(s) given, {} needed",
            distinct.len(),
            needed
        )));
    }
    interpolate(distinct.get(..needed).unwrap_or(distinct.as_slice()))
}

/// Lagrange interpolation at 0 over the given shares, without any threshold check.
fn interpolate(shares: &[&Share]) -> Result<MasterKey, StoreError> {
    let mut raw: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| {
            let mut v = Vec::with_capacity(1 + MASTER_KEY_LEN);
            v.push(s.index);
            v.extend_from_slice(s.value.as_slice());
            v
        })
        .collect();
    let result = Gf256::combine_bytes(&raw);
    wipe(&mut raw);
    let secret = Zeroizing::new(result.map_err(|e| bad(format!("cannot combine: {}", vsss_error(e))))?);
    MasterKey::from_slice(&secret).map_err(|_| bad("combined secret has the wrong length"))
}

fn vsss_error(e: vsss_rs::Error) -> &'static str {
    match e {
        vsss_rs::Error::SharingMinThreshold => "threshold below 2",
        vsss_rs::Error::SharingLimitLessThanThreshold => "fewer shares than the threshold",
        vsss_rs::Error::SharingDuplicateIdentifier => "duplicate share numbers",
        vsss_rs::Error::SharingInvalidIdentifier => "invalid share number",
        _ => "secret sharing failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(&[
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
            27, 28, 29, 30, 31, 32,
        ])
    }

    #[test]
    fn fewer_than_threshold_interpolate_to_another_key() {
        let k = key();
        let shares = split(&k, 5, 3).unwrap();
        for pair in [[0, 1], [1, 4], [2, 3]] {
            let two: Vec<&Share> = pair.iter().map(|&i| &shares[i]).collect();
            let wrong = interpolate(&two).unwrap();
            assert_ne!(wrong.as_bytes(), k.as_bytes());
        }
        let three: Vec<&Share> = [4, 0, 2].iter().map(|&i| &shares[i]).collect();
        assert_eq!(interpolate(&three).unwrap().as_bytes(), k.as_bytes());
    }

    #[test]
    fn a_single_share_reveals_nothing_obvious() {
        let k = key();
        for s in split(&k, 3, 2).unwrap() {
            assert_ne!(s.value.as_slice(), k.as_bytes());
        }
    }

    #[test]
    fn debug_hides_value() {
        let s = &split(&key(), 2, 2).unwrap()[0];
        let shown = format!("{s:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode(s.value.as_slice())));
    }
}
