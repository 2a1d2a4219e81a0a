//! Keys: X25519 recipients and identities, CAS-held symmetric keys, and the object binding.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptError;

/// The HPKE KEM used for public-key recipients: DHKEM(X25519, HKDF-SHA256), RFC 9180 §7.1.
pub(crate) type Kem = hpke::kem::X25519HkdfSha256;
pub(crate) type PublicKey = <Kem as hpke::Kem>::PublicKey;
pub(crate) type PrivateKey = <Kem as hpke::Kem>::PrivateKey;

/// Text prefix of a public-key recipient: `cloister1x25519:` followed by 64 lowercase hex digits.
pub const RECIPIENT_PREFIX: &str = "cloister1x25519:";
/// Text prefix of a secret identity line: `CLOISTER-X25519-SECRET-KEY:` followed by 64 hex digits.
pub const IDENTITY_PREFIX: &str = "CLOISTER-X25519-SECRET-KEY:";

/// Maximum length of a symmetric key id (it is stored with a one-byte length in the header).
pub const MAX_KEY_ID_LEN: usize = 255;

/// Where an object lives: its bucket and object key. Both are mixed into every key derived for
/// the object, so a ciphertext moved to another bucket or key no longer decrypts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectBinding {
    /// Bucket name.
    pub bucket: String,
    /// Object key (path inside the bucket).
    pub key: String,
}

impl ObjectBinding {
    /// Convenience constructor.
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        ObjectBinding {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    /// Length-prefixed encoding `u32be(len(bucket)) ‖ bucket ‖ u32be(len(key)) ‖ key` used in
    /// every KDF `info` and the HPKE `info`. Length prefixes make the encoding injective: no two
    /// different (bucket, key) pairs produce the same bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CryptError> {
        let b = self.bucket.as_bytes();
        let k = self.key.as_bytes();
        let bl = u32::try_from(b.len()).map_err(|_| CryptError::InvalidArgument("bucket name too long"))?;
        let kl = u32::try_from(k.len()).map_err(|_| CryptError::InvalidArgument("object key too long"))?;
        let mut out = Vec::with_capacity(8 + b.len() + k.len());
        out.extend_from_slice(&bl.to_be_bytes());
        out.extend_from_slice(b);
        out.extend_from_slice(&kl.to_be_bytes());
        out.extend_from_slice(k);
        Ok(out)
    }
}

/// A symmetric 32-byte key known by an id (the CAS-held keys): the file key is wrapped under a
/// key derived from it. `Debug` shows only the id.
#[derive(Clone)]
pub struct SymmetricKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl SymmetricKey {
    /// Creates a symmetric key. The id must be 1..=255 bytes; it is stored in clear in the
    /// header so a decryptor can pick its stanza.
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> Result<Self, CryptError> {
        let mut key = key;
        let id = id.into();
        let out = if id.is_empty() || id.len() > MAX_KEY_ID_LEN {
            Err(CryptError::InvalidArgument(
                "symmetric key id must be 1..=255 bytes",
            ))
        } else {
            Ok(SymmetricKey {
                id,
                key: Zeroizing::new(key),
            })
        };
        key.zeroize();
        out
    }

    /// Generates a fresh random key with the given id.
    pub fn generate(id: impl Into<String>) -> Result<Self, CryptError> {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::header::random(&mut key[..])?;
        SymmetricKey::new(id, *key)
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SymmetricKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Someone an object is encrypted to: an X25519 public key (file key wrapped with HPKE) or a
/// CAS-held symmetric key.
///
/// X25519 recipients parse from and display as `cloister1x25519:<64 hex digits>`. An X25519
/// recipient made with [`Recipient::authenticated_by`] also carries the sender's identity: its
/// stanza proves to the recipient that the sender wrote the object.
#[derive(Clone, Debug)]
pub struct Recipient(pub(crate) RecipientKind);

#[derive(Clone, Debug)]
pub(crate) enum RecipientKind {
    X25519(PublicKey),
    /// The file key is wrapped to `recipient` in HPKE Auth mode with `sender`'s static key.
    X25519Auth {
        recipient: PublicKey,
        sender: Box<Identity>,
    },
    Symmetric(SymmetricKey),
}

impl Recipient {
    /// An X25519 recipient from its raw 32-byte public key.
    pub fn from_x25519_bytes(bytes: [u8; 32]) -> Result<Self, CryptError> {
        let pk = PublicKey::from_bytes(&bytes)
            .map_err(|_| CryptError::InvalidRecipient(hex::encode(bytes), "not an X25519 public key"))?;
        Ok(Recipient(RecipientKind::X25519(pk)))
    }

    /// A recipient that wraps the file key under a CAS-held symmetric key.
    pub fn symmetric(key: SymmetricKey) -> Self {
        Recipient(RecipientKind::Symmetric(key))
    }

    /// The same X25519 recipient, whose stanza will also authenticate `sender` (HPKE Auth mode,
    /// stanza kind `0x03`): the recipient's decryption then reports `sender.public()` as the
    /// object's sender, and can require it (see [`crate::decrypt_from`]). Replaces any sender set
    /// before. Symmetric recipients cannot authenticate a sender (anyone holding the key could
    /// have written the object), so they are refused.
    ///
    /// Each recipient of an object learns its file key; any of them could therefore make
    /// another object, under the same bucket and key, that the *other* recipients accept as
    /// coming from `sender` (see stanza kind `0x03` in `docs/encrypted-object-format.md`).
    pub fn authenticated_by(&self, sender: &Identity) -> Result<Recipient, CryptError> {
        let recipient = match &self.0 {
            RecipientKind::X25519(pk) | RecipientKind::X25519Auth { recipient: pk, .. } => pk.clone(),
            RecipientKind::Symmetric(_) => {
                return Err(CryptError::InvalidArgument(
                    "only X25519 recipients can authenticate a sender",
                ));
            }
        };
        Ok(Recipient(RecipientKind::X25519Auth {
            recipient,
            sender: Box::new(sender.clone()),
        }))
    }

    /// The raw X25519 public key (of the recipient, not of its sender), or `None` for a
    /// symmetric recipient.
    pub fn x25519_bytes(&self) -> Option<[u8; 32]> {
        match &self.0 {
            RecipientKind::X25519(pk) | RecipientKind::X25519Auth { recipient: pk, .. } => {
                Some(key_bytes(pk))
            }
            RecipientKind::Symmetric(_) => None,
        }
    }

    /// Whether this recipient's stanza will authenticate a sender.
    pub(crate) fn has_sender(&self) -> bool {
        matches!(self.0, RecipientKind::X25519Auth { .. })
    }

    /// The raw key of a plain X25519 recipient, as named in a list of expected senders.
    pub(crate) fn sender_key(&self) -> Result<[u8; 32], CryptError> {
        match &self.0 {
            RecipientKind::X25519(pk) => Ok(key_bytes(pk)),
            RecipientKind::X25519Auth { .. } | RecipientKind::Symmetric(_) => {
                Err(CryptError::InvalidArgument(
                    "expected senders must be plain X25519 public keys (cloister1x25519:…)",
                ))
            }
        }
    }
}

pub(crate) fn key_bytes(pk: &PublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    pk.write_exact(&mut out);
    out
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            // An authenticated recipient shows the recipient's key: the object is for it, and
            // the sender is known here by its private key, which is never shown.
            RecipientKind::X25519(pk) | RecipientKind::X25519Auth { recipient: pk, .. } => {
                write!(f, "{RECIPIENT_PREFIX}{}", hex::encode(key_bytes(pk)))
            }
            // Never print the key itself.
            RecipientKind::Symmetric(k) => write!(f, "cloister-symmetric:{}", k.id),
        }
    }
}

impl FromStr for Recipient {
    type Err = CryptError;

    /// Parses `cloister1x25519:<64 hex digits>` (the only public, textual recipient kind).
    fn from_str(s: &str) -> Result<Self, CryptError> {
        let t = s.trim();
        let hexpart = t
            .strip_prefix(RECIPIENT_PREFIX)
            .ok_or_else(|| CryptError::InvalidRecipient(s.to_owned(), "expected prefix cloister1x25519:"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut bytes).map_err(|_| {
            CryptError::InvalidRecipient(s.to_owned(), "expected 64 hex digits after the prefix")
        })?;
        Recipient::from_x25519_bytes(bytes)
    }
}

/// An X25519 private key that can open the HPKE stanzas of objects encrypted to its
/// [`Recipient`]. `Debug` shows only the public key; the secret is zeroized on drop (by
/// x25519-dalek).
#[derive(Clone)]
pub struct Identity {
    pub(crate) sk: PrivateKey,
    pub(crate) pk: PublicKey,
}

impl Identity {
    /// Generates a fresh identity from the operating system's RNG.
    pub fn generate() -> Self {
        let (sk, pk) = Kem::gen_keypair();
        Identity { sk, pk }
    }

    /// Builds an identity from a raw 32-byte X25519 secret (clamped as RFC 7748 requires).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, CryptError> {
        let sk = PrivateKey::from_bytes(secret)
            .map_err(|_| CryptError::InvalidIdentity("bad X25519 secret key"))?;
        let pk = Kem::sk_to_pk(&sk);
        Ok(Identity { sk, pk })
    }

    /// The raw (clamped) 32-byte secret. Handle with care.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.sk.write_exact(&mut out[..]);
        out
    }

    /// The public recipient for this identity.
    pub fn public(&self) -> Recipient {
        Recipient(RecipientKind::X25519(self.pk.clone()))
    }

    /// The secret as text: `CLOISTER-X25519-SECRET-KEY:<64 hex digits>`.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let secret = self.secret_bytes();
        let mut s = Zeroizing::new(String::with_capacity(IDENTITY_PREFIX.len() + 64));
        s.push_str(IDENTITY_PREFIX);
        let mut hexbuf = Zeroizing::new([0u8; 64]);
        // Encoding into a zeroized buffer avoids an unzeroized temporary String.
        if hex::encode_to_slice(&secret[..], &mut hexbuf[..]).is_ok() {
            for &c in hexbuf.iter() {
                s.push(char::from(c));
            }
        }
        s
    }

    /// Parses the text form written by [`Identity::to_secret_string`]. Lines starting with `#`
    /// and blank lines are ignored, so a saved identity file parses as a whole.
    pub fn parse(text: &str) -> Result<Self, CryptError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(CryptError::InvalidIdentity("no secret key line"))?;
        let hexpart = line
            .strip_prefix(IDENTITY_PREFIX)
            .ok_or(CryptError::InvalidIdentity(
                "expected prefix CLOISTER-X25519-SECRET-KEY:",
            ))?;
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hexpart, &mut secret[..])
            .map_err(|_| CryptError::InvalidIdentity("expected 64 hex digits"))?;
        Identity::from_secret_bytes(&secret)
    }

    /// Writes the identity to a new file created with mode 0600 (on Unix). Refuses to overwrite
    /// an existing file, so a key is never silently replaced and the mode is always ours.
    pub fn save(&self, path: &Path) -> Result<(), CryptError> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(path)?;
        let secret = self.to_secret_string();
        let body = Zeroizing::new(format!(
            "# cloister identity\n# public key: {}\n{}\n",
            self.public(),
            secret.as_str()
        ));
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// Loads an identity file written by [`Identity::save`].
    pub fn load(path: &Path) -> Result<Self, CryptError> {
        let text = Zeroizing::new(fs::read_to_string(path)?);
        Identity::parse(&text)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public().to_string())
            .finish_non_exhaustive()
    }
}

/// A key that can open an object: an X25519 identity or a symmetric key.
#[derive(Clone, Copy, Debug)]
pub enum DecryptionKey<'a> {
    /// Opens X25519/HPKE stanzas.
    X25519(&'a Identity),
    /// Opens the symmetric stanza with the same key id.
    Symmetric(&'a SymmetricKey),
}

impl<'a> From<&'a Identity> for DecryptionKey<'a> {
    fn from(i: &'a Identity) -> Self {
        DecryptionKey::X25519(i)
    }
}

impl<'a> From<&'a SymmetricKey> for DecryptionKey<'a> {
    fn from(k: &'a SymmetricKey) -> Self {
        DecryptionKey::Symmetric(k)
    }
}
