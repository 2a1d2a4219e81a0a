//! Cloister's encrypted object format.
//!
//! Objects are encrypted client-side (or inside the TEE) and stay encrypted in storage:
//!
//! * a **header** with one stanza per recipient: the 32-byte file key wrapped with HPKE
//!   (RFC 9180, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305) to an X25519
//!   public key (in Auth mode when a sender authenticates the object), or wrapped under a
//!   CAS-held symmetric key; authenticated by HMAC-SHA256;
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
//! copies; in place it runs close to raw AES-256-GCM (`cloister-bench crypt` measures it).
//!
//! For objects in files, [`encrypt_file`] and [`decrypt_file`] go from one `std::fs::File` to
//! another on several threads: chunks are independent given the payload key and their index, so
//! each thread seals (opens) its own contiguous range of chunks, reading and writing them with
//! positional I/O at their offsets in both files. They write and accept the same bytes as the
//! other APIs, give the same errors as [`decrypt`], and [`decrypt_file`] truncates its output to
//! length 0 on any error, so no plaintext of an object that fails to verify is left on disk.
//!
//! ```
//! use cloister_crypt::{DecryptionKey, EncryptOptions, Identity, ObjectBinding, decrypt_file, encrypt_file};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("cloister-crypt-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let id = Identity::generate();
//! let binding = ObjectBinding::new("input", "scan-001.dcm");
//! std::fs::write(dir.join("scan.dcm"), b"patient data")?;
//! let plain = std::fs::File::open(dir.join("scan.dcm"))?;
//! let sealed = std::fs::File::options().read(true).write(true).create(true).truncate(true)
//!     .open(dir.join("scan.dcm.clst"))?;
//! let threads = std::thread::available_parallelism().map_or(1, usize::from);
//! encrypt_file(&plain, &sealed, &[id.public()], &binding, &EncryptOptions::default(), threads)?;
//! let opened = std::fs::File::create(dir.join("scan.out"))?;
//! let n = decrypt_file(&sealed, &opened, DecryptionKey::X25519(&id), &binding, threads)?;
//! assert_eq!(n, 12);
//! assert_eq!(std::fs::read(dir.join("scan.out"))?, b"patient data");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! **Sender authentication.** An owner proves that an object comes from them by sealing it to
//! recipients made with [`Recipient::authenticated_by`] (HPKE Auth-mode stanzas that take the
//! owner's own [`Identity`] into the key exchange). The `…_from` decryption functions ([`decrypt_from`],
//! [`Decryptor::new_from`], [`decrypt_into_from`], [`open_in_place_from`],
//! [`decrypt_file_from`]) report that sender ([`Decrypted::sender`]) and take a list of
//! required senders: when it is not empty, an object none of them authenticated is refused with
//! [`CryptError::SenderNotAuthenticated`] before any plaintext is released. The other decryption
//! functions accept objects with or without a sender and do not report it. Every recipient of an
//! object knows its file key, so with several recipients each of them could forge the sender
//! towards the others (for the same bucket and key); see the format document.
//!
//! ```
//! use cloister_crypt::{CryptError, DecryptionKey, EncryptOptions, Identity, ObjectBinding};
//! use cloister_crypt::{decrypt_from, encrypt};
//! let owner = Identity::generate();
//! let service = Identity::generate();
//! let binding = ObjectBinding::new("input", "scan-001.dcm");
//! let to_service = service.public().authenticated_by(&owner)?;
//! let mut ct = Vec::new();
//! encrypt(&b"patient data"[..], &mut ct, &[to_service], &binding, &EncryptOptions::default())?;
//!
//! let mut pt = Vec::new();
//! let opened = decrypt_from(&ct[..], &mut pt, DecryptionKey::X25519(&service), &binding, &[owner.public()])?;
//! assert_eq!(opened.sender.map(|s| s.to_string()), Some(owner.public().to_string()));
//! assert_eq!(pt, b"patient data");
//!
//! // Anyone can encrypt to the service's public key, but not as the owner.
//! let mut forged = Vec::new();
//! encrypt(&b"forged"[..], &mut forged, &[service.public()], &binding, &EncryptOptions::default())?;
//! let refused = decrypt_from(&forged[..], &mut Vec::new(), (&service).into(), &binding, &[owner.public()]);
//! assert!(matches!(refused, Err(CryptError::SenderNotAuthenticated(_))));
//! # Ok::<(), CryptError>(())
//! ```
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

mod age;
mod error;
mod file;
mod header;
mod keys;
mod slice;
mod stream;

pub use age::{AgeRecipient, encrypt_age};
pub use error::CryptError;
pub use file::{decrypt_file, decrypt_file_from, encrypt_file};
pub use header::{
    DEFAULT_CHUNK_SIZE, HeaderInfo, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RecipientInfo, TAG_LEN, VERSION,
    inspect,
};
pub use keys::{
    DecryptionKey, IDENTITY_PREFIX, Identity, ObjectBinding, RECIPIENT_PREFIX, Recipient, SymmetricKey,
};
pub use slice::{
    decrypt_into, decrypt_into_from, decrypt_to_vec, encrypt_into, encrypt_to_vec, open_in_place,
    open_in_place_from, seal_in_place,
};
pub use stream::{
    Decrypted, Decryptor, EncryptOptions, Encryptor, decrypt, decrypt_from, decrypt_with, encrypt,
    encrypted_len, payload_len,
};
