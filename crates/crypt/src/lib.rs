//! Cloister's encrypted object format.
//!
//! Objects are encrypted client-side (or inside the TEE) and stay encrypted in storage:
//!
//! * a **header** with one stanza per recipient: the 32-byte file key wrapped with HPKE
//!   (RFC 9180, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305) to an X25519
//!   public key, or wrapped under a CAS-held symmetric key; authenticated by HMAC-SHA256;
//! * a **payload** in fixed-size chunks sealed with AES-256-GCM (aws-lc-rs) in the STREAM
//!   construction of Tink's AES-GCM-HKDF streaming AEAD: nonce = 7-byte prefix ‖ 32-bit chunk
//!   counter ‖ last-chunk flag, so truncation, reordering, duplication and any flipped byte are
//!   detected;
//! * every key is derived with the object's **binding** (bucket, object key) in the KDF `info`,
//!   so storage cannot swap two objects undetected.
//!
//! Two APIs write and read the same bytes: the streaming one over `std::io` ([`encrypt`],
//! [`Encryptor`], [`decrypt`], [`Decryptor`]) in constant memory, and the in-memory one for
//! objects held in a buffer ([`encrypt_into`], [`decrypt_into`] from a slice into a `Vec`;
//! [`seal_in_place`], [`open_in_place`] within one `Vec`), which avoids the `Read`/`Write`
//! copies; in place it runs close to raw AES-256-GCM (see [`mod@bench`]).
//!
//! The byte-level format is in `docs/encrypted-object-format.md`. For export to people outside
//! Cloister, [`encrypt_age`] writes the age v1 format that stock `age`/`rage` decrypt.
//!
//! ```
//! use cloister_crypt::{decrypt, encrypt, EncryptOptions, Identity, ObjectBinding};
//! let id = Identity::generate();
//! let binding = ObjectBinding::new("input", "scan-001.dcm");
//! let mut ct = Vec::new();
//! encrypt(&b"patient data"[..], &mut ct, &[id.public()], &binding, &EncryptOptions::default())?;
//! let mut pt = Vec::new();
//! decrypt(&ct[..], &mut pt, &id, &binding)?;
//! assert_eq!(pt, b"patient data");
//! // The same ciphertext under another name does not decrypt.
//! let moved = ObjectBinding::new("input", "scan-002.dcm");
//! assert!(decrypt(&ct[..], &mut Vec::new(), &id, &moved).is_err());
//! # Ok::<(), cloister_crypt::CryptError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod age;
pub mod bench;
mod error;
mod header;
mod keys;
mod slice;
mod stream;

pub use age::{AgeRecipient, encrypt_age};
pub use error::CryptError;
pub use header::{
    DEFAULT_CHUNK_SIZE, HeaderInfo, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RecipientInfo, TAG_LEN, VERSION,
    inspect,
};
pub use keys::{
    DecryptionKey, IDENTITY_PREFIX, Identity, ObjectBinding, RECIPIENT_PREFIX, Recipient, SymmetricKey,
};
pub use slice::{decrypt_into, decrypt_to_vec, encrypt_into, encrypt_to_vec, open_in_place, seal_in_place};
pub use stream::{
    Decryptor, EncryptOptions, Encryptor, decrypt, decrypt_with, encrypt, encrypted_len, payload_len,
};
