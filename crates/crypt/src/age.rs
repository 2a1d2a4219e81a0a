//! Export to the age v1 format (<https://age-encryption.org/v1>, C2SP age spec) so a recipient
//! can decrypt with stock `age` / `rage`.
//!
//! Only what export needs is implemented: X25519 recipient stanzas, the header MAC, and the
//! STREAM payload (ChaCha20-Poly1305, 64 KiB chunks). Written here rather than taken from the
//! `age` crate because that crate pulls a large i18n/CLI dependency tree into every binary that
//! links this library; the primitives come from aws-lc-rs, which we already use.
//! Interoperability is tested against the real `age` binary (tests/age_interop.rs).

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{agreement, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use zeroize::Zeroizing;

use crate::CryptError;
use crate::header::{hkdf_sha256, random};
use crate::keys::{Identity, Recipient};
use crate::stream::encrypt_chunks;

const AGE_CHUNK: usize = 64 * 1024;
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";

/// An age X25519 recipient (`age1…`, Bech32).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AgeRecipient([u8; 32]);

impl AgeRecipient {
    /// From a raw X25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AgeRecipient(bytes)
    }

    /// The same X25519 key as a Cloister recipient, if it is a plain X25519 one. An identity's
    /// key can thus receive both formats; age export then decrypts with
    /// [`Identity::to_age_secret_key`].
    ///
    /// `None` for a symmetric recipient, and for one made with [`Recipient::authenticated_by`]:
    /// age X25519 stanzas cannot authenticate a sender, and exporting would silently drop it.
    pub fn from_recipient(r: &Recipient) -> Option<Self> {
        if r.has_sender() {
            return None;
        }
        r.x25519_bytes().map(AgeRecipient)
    }
}

impl fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeRecipient({self})")
    }
}

impl fmt::Display for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bech32::encode("age", &self.0))
    }
}

impl FromStr for AgeRecipient {
    type Err = CryptError;

    /// Parses `age1…` (lower case, as age prints it).
    fn from_str(s: &str) -> Result<Self, CryptError> {
        let t = s.trim();
        let (hrp, data) = bech32::decode(t)
            .ok_or_else(|| CryptError::InvalidRecipient(s.to_owned(), "not valid Bech32"))?;
        if hrp != "age" {
            return Err(CryptError::InvalidRecipient(
                s.to_owned(),
                "expected an age1… X25519 recipient",
            ));
        }
        let bytes: [u8; 32] = data.as_slice().try_into().map_err(|_| {
            CryptError::InvalidRecipient(s.to_owned(), "age X25519 recipient must be 32 bytes")
        })?;
        Ok(AgeRecipient(bytes))
    }
}

impl Identity {
    /// The identity as an age secret key (`AGE-SECRET-KEY-1…`), for decrypting an age export
    /// with stock `age -d -i`. Handle like any private key.
    pub fn to_age_secret_key(&self) -> Zeroizing<String> {
        let secret = self.secret_bytes();
        Zeroizing::new(bech32::encode("age-secret-key-", &secret[..]).to_ascii_uppercase())
    }

    /// Parses an age secret key (`AGE-SECRET-KEY-1…`) as an identity.
    pub fn from_age_secret_key(s: &str) -> Result<Self, CryptError> {
        let lower = Zeroizing::new(s.trim().to_ascii_lowercase());
        let (hrp, data) = bech32::decode(&lower).ok_or(CryptError::InvalidIdentity("not valid Bech32"))?;
        let data = Zeroizing::new(data);
        if hrp != "age-secret-key-" {
            return Err(CryptError::InvalidIdentity("expected AGE-SECRET-KEY-1…"));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        if data.len() != 32 {
            return Err(CryptError::InvalidIdentity("age secret key must be 32 bytes"));
        }
        secret.copy_from_slice(&data);
        Identity::from_secret_bytes(&secret)
    }
}

/// Encrypts `input` to the age v1 format for `recipients` (X25519 only), readable by stock
/// `age -d` / `rage -d`. Returns the plaintext length. There is no object binding in age: use
/// it for export out of Cloister only.
pub fn encrypt_age<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    recipients: &[AgeRecipient],
) -> Result<u64, CryptError> {
    if recipients.is_empty() {
        return Err(CryptError::InvalidArgument("at least one recipient is required"));
    }
    // age's file key is 16 bytes.
    let mut file_key = Zeroizing::new([0u8; 16]);
    random(&mut file_key[..])?;

    let mut header = String::with_capacity(64 + recipients.len() * 120);
    header.push_str("age-encryption.org/v1\n");
    for r in recipients {
        let (share, body) = wrap_x25519(&file_key, r)?;
        header.push_str("-> X25519 ");
        header.push_str(&B64.encode(share));
        header.push('\n');
        // The 32-byte body is 43 base64 chars: one line, shorter than 64 columns as required.
        header.push_str(&B64.encode(body));
        header.push('\n');
    }
    header.push_str("---");
    let mut mac_key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&[], &file_key[..], &[b"header"], &mut mac_key[..])?;
    // The MAC covers the header up to and including "---", not the space after it.
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]),
        header.as_bytes(),
    );
    header.push(' ');
    header.push_str(&B64.encode(mac.as_ref()));
    header.push('\n');
    output.write_all(header.as_bytes())?;

    let mut nonce = [0u8; 16];
    random(&mut nonce)?;
    output.write_all(&nonce)?;
    let mut payload_key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&nonce, &file_key[..], &[b"payload"], &mut payload_key[..])?;
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &payload_key[..])
            .map_err(|_| CryptError::Crypto("ChaCha20-Poly1305 key setup failed"))?,
    );
    encrypt_chunks(&mut input, &mut output, AGE_CHUNK, &key, age_nonce)
}

/// age STREAM nonce: 11-byte big-endian chunk counter ‖ last-chunk flag.
fn age_nonce(index: u64, last: bool) -> Result<Nonce, CryptError> {
    let mut n = [0u8; 12];
    let (ctr, flag) = n.split_at_mut(11);
    if let Some(c) = ctr.get_mut(3..) {
        c.copy_from_slice(&index.to_be_bytes());
    }
    if let Some(f) = flag.first_mut() {
        *f = u8::from(last);
    }
    Ok(Nonce::assume_unique_for_key(n))
}

/// One X25519 stanza: ephemeral share and the wrapped file key.
fn wrap_x25519(file_key: &[u8; 16], r: &AgeRecipient) -> Result<([u8; 32], [u8; 32]), CryptError> {
    let eph = agreement::PrivateKey::generate(&agreement::X25519)
        .map_err(|_| CryptError::Crypto("X25519 key generation failed"))?;
    let share_pk = eph
        .compute_public_key()
        .map_err(|_| CryptError::Crypto("X25519 public key failed"))?;
    let share: [u8; 32] = share_pk
        .as_ref()
        .try_into()
        .map_err(|_| CryptError::Crypto("X25519 public key length"))?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, r.0);
    let bad_recipient = || CryptError::InvalidRecipient(r.to_string(), "X25519 agreement failed");
    let shared: Zeroizing<[u8; 32]> = agreement::agree(&eph, peer, bad_recipient(), |s| {
        <[u8; 32]>::try_from(s)
            .map(Zeroizing::new)
            .map_err(|_| bad_recipient())
    })?;
    // age rejects an all-zero shared secret (low-order recipient key).
    if shared.iter().all(|&b| b == 0) {
        return Err(bad_recipient());
    }
    let mut salt = [0u8; 64];
    let (a, b) = salt.split_at_mut(32);
    a.copy_from_slice(&share);
    b.copy_from_slice(&r.0);
    let mut wrap_key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&salt, &shared[..], &[X25519_LABEL], &mut wrap_key[..])?;
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &wrap_key[..])
            .map_err(|_| CryptError::Crypto("ChaCha20-Poly1305 key setup failed"))?,
    );
    let mut body = [0u8; 32];
    let (ct, tag_dst) = body.split_at_mut(16);
    ct.copy_from_slice(&file_key[..]);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::empty(), ct)
        .map_err(|_| CryptError::Crypto("ChaCha20-Poly1305 seal failed"))?;
    tag_dst.copy_from_slice(tag.as_ref());
    Ok((share, body))
}

/// Minimal Bech32 (BIP 173) as age uses it: no 90-character limit, lower-case HRP.
mod bech32 {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GEN: [u32; 5] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3];

    fn polymod(values: impl Iterator<Item = u8>) -> u32 {
        let mut chk: u32 = 1;
        for v in values {
            let b = chk >> 25;
            chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
            for (i, g) in GEN.iter().enumerate() {
                if (b >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk
    }

    fn hrp_expand(hrp: &str) -> impl Iterator<Item = u8> + '_ {
        hrp.bytes()
            .map(|c| c >> 5)
            .chain(std::iter::once(0))
            .chain(hrp.bytes().map(|c| c & 31))
    }

    fn to_5bit(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 8 / 5 + 1);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in data {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(((acc >> bits) & 31) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (5 - bits)) & 31) as u8);
        }
        out
    }

    fn from_5bit(data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() * 5 / 8);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &v in data {
            acc = ((acc << 5) | u32::from(v)) & 0xfff;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push(((acc >> bits) & 0xff) as u8);
            }
        }
        // Padding must be shorter than 5 bits and all zero.
        if bits >= 5 || (acc << (8 - bits)) & 0xff != 0 {
            return None;
        }
        Some(out)
    }

    /// Encodes with a lower-case HRP.
    pub(super) fn encode(hrp: &str, data: &[u8]) -> String {
        let d5 = to_5bit(data);
        let pm = polymod(hrp_expand(hrp).chain(d5.iter().copied()).chain([0u8; 6])) ^ 1;
        let mut s = String::with_capacity(hrp.len() + 1 + d5.len() + 6);
        s.push_str(hrp);
        s.push('1');
        let checksum = (0..6).map(|i| ((pm >> (5 * (5 - i))) & 31) as u8);
        for v in d5.iter().copied().chain(checksum) {
            s.push(char::from(CHARSET[usize::from(v & 31)]));
        }
        s
    }

    /// Decodes a lower-case Bech32 string into (hrp, data). `None` on any error.
    pub(super) fn decode(s: &str) -> Option<(String, Vec<u8>)> {
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        let pos = s.rfind('1')?;
        let (hrp, rest) = s.split_at(pos);
        let data = rest.get(1..)?;
        if hrp.is_empty() || data.len() < 6 {
            return None;
        }
        let mut vals = Vec::with_capacity(data.len());
        for c in data.bytes() {
            let v = CHARSET.iter().position(|&x| x == c)?;
            vals.push(u8::try_from(v).ok()?);
        }
        if polymod(hrp_expand(hrp).chain(vals.iter().copied())) != 1 {
            return None;
        }
        let payload = vals.get(..vals.len() - 6)?;
        Some((hrp.to_owned(), from_5bit(payload)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bech32_roundtrip_and_checksum() {
        let key = [7u8; 32];
        let r = AgeRecipient::from_bytes(key);
        let s = r.to_string();
        assert!(s.starts_with("age1"));
        assert_eq!(s.parse::<AgeRecipient>().unwrap(), r);
        // One changed character breaks the checksum.
        let mut bad = s.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'q' { b'p' } else { b'q' };
        assert!(String::from_utf8(bad).unwrap().parse::<AgeRecipient>().is_err());
    }

    #[test]
    fn known_age_recipient_parses() {
        // From the age README (public example recipient).
        let r: AgeRecipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
            .parse()
            .unwrap();
        assert_eq!(
            r.to_string(),
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
        );
    }

    #[test]
    fn age_secret_key_roundtrip() {
        let id = Identity::generate();
        let s = id.to_age_secret_key();
        assert!(s.starts_with("AGE-SECRET-KEY-1"));
        let back = Identity::from_age_secret_key(&s).unwrap();
        assert_eq!(back.public().to_string(), id.public().to_string());
    }
}
