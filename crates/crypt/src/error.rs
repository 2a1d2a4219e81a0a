//! Error type of the crate.
//!
//! No variant carries key material, plaintext or ciphertext: only fixed messages, indices and
//! public strings (recipient encodings given by the caller).

use std::io;

/// Everything that can go wrong while encrypting, decrypting or parsing keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),

    /// The input does not start with the Cloister object magic.
    #[error("not a Cloister encrypted object (bad magic)")]
    NotAnObject,

    /// The object was written by a format version this build does not understand.
    #[error("unsupported encrypted object version {0}")]
    UnsupportedVersion(u8),

    /// The header could not be parsed (the reason is a fixed description).
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),

    /// No recipient stanza could be opened with the given key. Because the bucket/key binding
    /// is part of the key-wrap context, this is also what a wrong binding looks like.
    #[error(
        "no recipient stanza opens with this key for this bucket/key binding \
         (wrong identity, or the object was moved or renamed)"
    )]
    NoMatchingRecipient,

    /// Senders were required, and the object is not authenticated by any of them for this key
    /// (the reason is a fixed description). Nothing of the object was decrypted.
    #[error("sender not authenticated: {0}")]
    SenderNotAuthenticated(&'static str),

    /// The header MAC did not verify: the header was modified, or the binding differs.
    #[error("header authentication failed: header tampered or bucket/key binding differs")]
    HeaderMac,

    /// The stream ended at a chunk boundary before a chunk marked as last was seen.
    #[error("truncated: the last chunk is missing")]
    Truncated,

    /// A chunk failed authentication.
    #[error(
        "chunk {index} failed authentication \
         (tampered, truncated mid-chunk, reordered, duplicated, or from another object)"
    )]
    ChunkAuth {
        /// Zero-based index of the chunk that failed.
        index: u64,
    },

    /// An empty chunk marked as last appeared after other chunks (only an empty object may
    /// consist of an empty last chunk); rejected to keep the encoding canonical.
    #[error("chunk {index}: empty last chunk is only allowed for an empty object")]
    EmptyLastChunk {
        /// Zero-based index of the offending chunk.
        index: u64,
    },

    /// More chunks than the 32-bit chunk counter allows.
    #[error("object too large: more than 2^32 chunks")]
    TooManyChunks,

    /// A recipient string could not be parsed.
    #[error("invalid recipient {0:?}: {1}")]
    InvalidRecipient(String, &'static str),

    /// An identity (private key) could not be parsed or loaded.
    #[error("invalid identity: {0}")]
    InvalidIdentity(&'static str),

    /// Encryption options or arguments are invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),

    /// A primitive of the cryptographic library failed (for example the system RNG).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),

    /// The encryptor was used after an earlier error or after `finish`.
    #[error("encryptor already finished or failed")]
    Finished,
}

impl From<CryptError> for io::Error {
    fn from(e: CryptError) -> io::Error {
        match e {
            CryptError::Io(inner) => inner,
            CryptError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
