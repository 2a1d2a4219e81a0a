//! Export to the age v1 format (<https://age-encryption.org/v1>, C2SP age spec) so a recipient
//! can decrypt with stock `age` / `rage`.
//!
//! Only what export needs is implemented: X25519 recipient stanzas, the header MAC, and the
//! STREAM payload (ChaCha20-Poly1305, 64 KiB chunks). Written here rather than taken from the
//! `age` crate because that crate pulls a large i18n/CLI dependency tree into every binary that
//! links this library; the primitives are the ones this crate already uses: X25519 from
//! x25519-dalek (as in HPKE), ChaCha20-Poly1305 and HKDF/HMAC from aws-lc-rs, Bech32 from
//! `bech32`. Interoperability is tested against the real `age` binary (tests/age_interop.rs).

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use zeroize::Zeroizing;

use crate::CryptError;
use crate::header::{hkdf_sha256, random};
use crate::keys::{Identity, Recipient};
use crate::stream::encrypt_chunks;

const AGE_CHUNK: usize = 64 * 1024;
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const RECIPIENT_HRP: Hrp = Hrp::parse_unchecked("age");
const SECRET_KEY_HRP: Hrp = Hrp::parse_unchecked("age-secret-key-");

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
        bech32::encode_lower_to_fmt::<Bech32, _>(f, RECIPIENT_HRP, &self.0).map_err(|_| fmt::Error)
    }
}

impl FromStr for AgeRecipient {
    type Err = CryptError;

    /// Parses `age1…` (lower case, as age prints it).
    fn from_str(s: &str) -> Result<Self, CryptError> {
        let t = s.trim();
        let (hrp, data) =
            bech32_decode(t).ok_or_else(|| CryptError::InvalidRecipient(s.to_owned(), "not valid Bech32"))?;
        if hrp != RECIPIENT_HRP.as_str() {
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
        let mut encoded = Zeroizing::new(String::new());
        // Writing into a String fails only on a length the 32-byte key cannot reach.
        let _ = bech32::encode_upper_to_fmt::<Bech32, _>(&mut *encoded, SECRET_KEY_HRP, &secret[..]);
        encoded
    }

    /// Parses an age secret key (`AGE-SECRET-KEY-1…`) as an identity.
    pub fn from_age_secret_key(s: &str) -> Result<Self, CryptError> {
        let lower = Zeroizing::new(s.trim().to_ascii_lowercase());
        let (hrp, data) = bech32_decode(&lower).ok_or(CryptError::InvalidIdentity("not valid Bech32"))?;
        let data = Zeroizing::new(data);
        if hrp != SECRET_KEY_HRP.as_str() {
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
    let mut seed = Zeroizing::new([0u8; 32]);
    random(&mut seed[..])?;
    let eph = x25519_dalek::StaticSecret::from(*seed);
    let share = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(r.0));
    // age rejects an all-zero shared secret (low-order recipient key).
    if !shared.was_contributory() {
        return Err(CryptError::InvalidRecipient(
            r.to_string(),
            "X25519 agreement failed",
        ));
    }
    let mut salt = [0u8; 64];
    let (a, b) = salt.split_at_mut(32);
    a.copy_from_slice(&share);
    b.copy_from_slice(&r.0);
    let mut wrap_key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&salt, shared.as_bytes(), &[X25519_LABEL], &mut wrap_key[..])?;
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

/// Decodes a lower-case Bech32 (BIP 173, not Bech32m) string into (HRP, data), as age writes
/// keys: no 90-character limit, padding of at most 4 zero bits. `None` on any error.
fn bech32_decode(s: &str) -> Option<(String, Vec<u8>)> {
    // The crate also accepts all-upper-case strings; age prints recipients in lower case.
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let checked = CheckedHrpstring::new::<Bech32>(s).ok()?;
    checked.validate_segwit_padding().ok()?;
    Some((checked.hrp().to_lowercase(), checked.byte_iter().collect()))
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
    fn only_lower_case_bech32_with_zero_padding_parses() {
        use bech32::{Bech32m, ByteIterExt as _, Fe32, Fe32IterExt as _};
        let key = [0x5au8; 32];
        let good = AgeRecipient::from_bytes(key).to_string();
        assert_eq!(
            good.parse::<AgeRecipient>().unwrap(),
            AgeRecipient::from_bytes(key)
        );
        // Bech32m (BIP 350) has another checksum constant: not age's encoding.
        let bech32m = bech32::encode::<Bech32m>(RECIPIENT_HRP, &key).unwrap();
        assert!(bech32m.parse::<AgeRecipient>().is_err());
        // age prints recipients in lower case.
        assert!(good.to_ascii_uppercase().parse::<AgeRecipient>().is_err());
        // 32 bytes leave 4 padding bits, which must be zero; set one, with a valid checksum.
        let mut fes: Vec<Fe32> = key.iter().copied().bytes_to_fes().collect();
        let last = fes.pop().unwrap();
        fes.push(Fe32::try_from(last.to_u8() | 1).unwrap());
        let padded: String = fes
            .into_iter()
            .with_checksum::<Bech32>(&RECIPIENT_HRP)
            .chars()
            .collect();
        assert!(padded.starts_with("age1") && padded != good);
        assert!(padded.parse::<AgeRecipient>().is_err());
        // Another HRP, another length.
        let other = bech32::encode::<Bech32>(Hrp::parse_unchecked("agf"), &key).unwrap();
        assert!(other.parse::<AgeRecipient>().is_err());
        let short = bech32::encode::<Bech32>(RECIPIENT_HRP, &key[..31]).unwrap();
        assert!(short.parse::<AgeRecipient>().is_err());
        // A recipient is not a secret key, nor the other way round.
        assert!(Identity::from_age_secret_key(&good).is_err());
        let secret = Identity::generate().to_age_secret_key();
        assert!(secret.to_ascii_lowercase().parse::<AgeRecipient>().is_err());
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
