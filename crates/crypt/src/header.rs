//! The object header: constants, key derivation, recipient stanzas, header MAC, and `inspect`.
//!
//! Byte layout is documented in `docs/encrypted-object-format.md`; the comments here say why.

use std::io::{self, Read};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::CryptError;
use crate::keys::{DecryptionKey, Kem, ObjectBinding, PublicKey, Recipient, RecipientKind, SymmetricKey};

/// Magic bytes that start every object.
pub const MAGIC: [u8; 8] = *b"CLSTROBJ";
/// Format version written by this build.
pub const VERSION: u8 = 1;
/// Length of the per-object random HKDF salt.
pub const SALT_LEN: usize = 32;
/// Length of the per-object random nonce prefix (Tink's AES-GCM-HKDF streaming layout).
pub const NONCE_PREFIX_LEN: usize = 7;
/// AES-GCM tag length appended to every chunk.
pub const TAG_LEN: usize = 16;
/// Header MAC length (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Smallest allowed chunk size (plaintext bytes per chunk).
pub const MIN_CHUNK_SIZE: u32 = 16;
/// Largest allowed chunk size: bounds the memory a hostile header can make a decryptor allocate.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Default chunk size (64 KiB: fits L2 cache, so the streaming copies stay cheap).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 << 10;
/// Most recipient stanzas a header may carry.
pub const MAX_STANZAS: usize = 256;
/// Largest stanza body accepted (unknown kinds are skipped, but bounded).
pub const MAX_STANZA_BODY: usize = 4096;

/// Stanza kind: file key wrapped with HPKE to an X25519 public key.
pub const STANZA_X25519_HPKE: u8 = 1;
/// Stanza kind: file key wrapped under a key derived from a CAS-held symmetric key.
pub const STANZA_SYMMETRIC: u8 = 2;
/// Stanza kind: file key wrapped with HPKE in Auth mode to an X25519 public key, from the
/// sender's X25519 key named in the stanza.
pub const STANZA_X25519_HPKE_AUTH: u8 = 3;

const FILE_KEY_LEN: usize = 32;
/// magic(8) version(1) chunk_size(4) salt(32) nonce_prefix(7) stanza_count(2)
const FIXED_LEN: usize = 8 + 1 + 4 + SALT_LEN + NONCE_PREFIX_LEN + 2;
const HPKE_ENC_LEN: usize = 32;
const WRAPPED_LEN: usize = FILE_KEY_LEN + TAG_LEN;
const SENDER_KEY_LEN: usize = 32;
/// sender(32) ‖ enc(32) ‖ ct(48)
const AUTH_BODY_LEN: usize = SENDER_KEY_LEN + HPKE_ENC_LEN + WRAPPED_LEN;

const LABEL_HPKE: &[u8] = b"cloister-object-v1/hpke";
const LABEL_HPKE_AUTH: &[u8] = b"cloister-object-v1/hpke-auth";
const LABEL_SYMMETRIC: &[u8] = b"cloister-object-v1/symmetric-wrap";
const LABEL_HEADER: &[u8] = b"cloister-object-v1/header";
const LABEL_PAYLOAD: &[u8] = b"cloister-object-v1/payload";

type HpkeAead = hpke::aead::ChaCha20Poly1305;
type HpkeKdf = hpke::kdf::HkdfSha256;

/// Fills `buf` from the OS CSPRNG. Not aws-lc's RNG: it seeds itself with CPU-jitter entropy
/// on first use (milliseconds), a cost every short-lived runtime process would pay.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), CryptError> {
    getrandom::fill(buf).map_err(|_| CryptError::Crypto("system RNG failed"))
}

struct OutLen(usize);
impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): Extract(salt, ikm) then Expand(info, out.len()).
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), CryptError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    prk.expand(info, OutLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| CryptError::Crypto("HKDF expand failed"))
}

/// Per-object secrets derived from the file key.
pub(crate) struct ObjectKeys {
    pub(crate) payload: LessSafeKey,
    pub(crate) mac: hmac::Key,
}

/// Derives the header MAC key and the payload key. Both `info`s carry the binding so that a
/// different (bucket, key) yields unrelated keys: the MAC then fails before any chunk is read.
fn derive_object_keys(
    file_key: &[u8; FILE_KEY_LEN],
    salt: &[u8; SALT_LEN],
    binding: &[u8],
) -> Result<ObjectKeys, CryptError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(file_key);
    let mut mac_key = Zeroizing::new([0u8; 32]);
    let mut payload_key = Zeroizing::new([0u8; 32]);
    let fill = |label: &[u8], out: &mut [u8]| {
        prk.expand(&[label, binding], OutLen(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| CryptError::Crypto("HKDF expand failed"))
    };
    fill(LABEL_HEADER, &mut mac_key[..])?;
    fill(LABEL_PAYLOAD, &mut payload_key[..])?;
    let payload = UnboundKey::new(&AES_256_GCM, &payload_key[..])
        .map_err(|_| CryptError::Crypto("AES-256-GCM key setup failed"))?;
    Ok(ObjectKeys {
        payload: LessSafeKey::new(payload),
        mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_key[..]),
    })
}

/// Wrap key for a symmetric stanza. The salt is the object's random salt, so the key is fresh
/// per object and the all-zero AES-GCM nonce is used exactly once under it.
fn symmetric_wrap_key(
    key: &SymmetricKey,
    salt: &[u8; SALT_LEN],
    binding: &[u8],
) -> Result<LessSafeKey, CryptError> {
    let mut k = Zeroizing::new([0u8; 32]);
    let id = key.id().as_bytes();
    let id_len =
        [u8::try_from(id.len()).map_err(|_| CryptError::InvalidArgument("symmetric key id too long"))?];
    hkdf_sha256(
        salt,
        key.secret(),
        &[LABEL_SYMMETRIC, &id_len, id, binding],
        &mut k[..],
    )?;
    let unbound = UnboundKey::new(&AES_256_GCM, &k[..])
        .map_err(|_| CryptError::Crypto("AES-256-GCM key setup failed"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Length of the header [`build_header`] writes for `recipients`. Stanza sizes depend only on
/// the recipient kinds and symmetric key ids, so callers can size a buffer for a whole object
/// before any key is generated.
pub(crate) fn header_len_for(recipients: &[crate::Recipient]) -> usize {
    let stanzas: usize = recipients
        .iter()
        .map(|r| {
            // kind(1) ‖ body_len(2) ‖ body
            3 + match &r.0 {
                RecipientKind::X25519(_) => HPKE_ENC_LEN + WRAPPED_LEN,
                RecipientKind::X25519Auth { .. } => AUTH_BODY_LEN,
                RecipientKind::Symmetric(k) => 1 + k.id().len() + WRAPPED_LEN,
            }
        })
        .sum();
    FIXED_LEN + stanzas + MAC_LEN
}

/// A built header ready to be written, with the keys the encryptor needs.
pub(crate) struct NewHeader {
    pub(crate) bytes: Vec<u8>,
    pub(crate) payload: LessSafeKey,
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

/// Builds a fresh header: random file key, salt and nonce prefix; one stanza per recipient;
/// HMAC over everything before the MAC.
pub(crate) fn build_header(
    recipients: &[crate::Recipient],
    binding: &ObjectBinding,
    chunk_size: u32,
) -> Result<NewHeader, CryptError> {
    if recipients.is_empty() {
        return Err(CryptError::InvalidArgument("at least one recipient is required"));
    }
    if recipients.len() > MAX_STANZAS {
        return Err(CryptError::InvalidArgument("too many recipients (max 256)"));
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(CryptError::InvalidArgument(
            "chunk size must be between 16 bytes and 16 MiB",
        ));
    }
    let binding_enc = binding.encode()?;
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    let mut salt = [0u8; SALT_LEN];
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    random(&mut file_key[..])?;
    random(&mut salt)?;
    random(&mut nonce_prefix)?;

    let mut out = Vec::with_capacity(FIXED_LEN + recipients.len() * 100 + MAC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&chunk_size.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce_prefix);
    // Cannot fail: checked against MAX_STANZAS above.
    let count =
        u16::try_from(recipients.len()).map_err(|_| CryptError::InvalidArgument("too many recipients"))?;
    out.extend_from_slice(&count.to_be_bytes());

    let mut body = Vec::with_capacity(2 + 255 + WRAPPED_LEN);
    for r in recipients {
        body.clear();
        let kind = match &r.0 {
            RecipientKind::X25519(pk) => {
                let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, Kem>(
                    &OpModeS::Base,
                    pk,
                    &[LABEL_HPKE, &binding_enc].concat(),
                    &file_key[..],
                    &salt,
                )
                .map_err(|_| CryptError::InvalidRecipient(r.to_string(), "HPKE encapsulation failed"))?;
                body.extend_from_slice(&enc.to_bytes());
                body.extend_from_slice(&ct);
                STANZA_X25519_HPKE
            }
            RecipientKind::X25519Auth { recipient, sender } => {
                // The sender's key pair enters the KEM (RFC 9180 §5.1.3, AuthEncap): only its
                // holder (or the recipient) can make a stanza that opens with this sender named.
                let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, Kem>(
                    &OpModeS::Auth((sender.sk.clone(), sender.pk.clone())),
                    recipient,
                    &[LABEL_HPKE_AUTH, &binding_enc].concat(),
                    &file_key[..],
                    &salt,
                )
                .map_err(|_| CryptError::InvalidRecipient(r.to_string(), "HPKE encapsulation failed"))?;
                body.extend_from_slice(&crate::keys::key_bytes(&sender.pk));
                body.extend_from_slice(&enc.to_bytes());
                body.extend_from_slice(&ct);
                STANZA_X25519_HPKE_AUTH
            }
            RecipientKind::Symmetric(k) => {
                let wrap = symmetric_wrap_key(k, &salt, &binding_enc)?;
                let mut buf = Zeroizing::new(*file_key);
                let tag = wrap
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0u8; 12]),
                        Aad::empty(),
                        &mut buf[..],
                    )
                    .map_err(|_| CryptError::Crypto("AES-GCM seal failed"))?;
                let id = k.id().as_bytes();
                body.push(
                    u8::try_from(id.len())
                        .map_err(|_| CryptError::InvalidArgument("symmetric key id too long"))?,
                );
                body.extend_from_slice(id);
                body.extend_from_slice(&buf[..]);
                body.extend_from_slice(tag.as_ref());
                STANZA_SYMMETRIC
            }
        };
        out.push(kind);
        let len = u16::try_from(body.len()).map_err(|_| CryptError::InvalidArgument("stanza too large"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
    }

    let keys = derive_object_keys(&file_key, &salt, &binding_enc)?;
    let mac = hmac::sign(&keys.mac, &out);
    out.extend_from_slice(mac.as_ref());
    Ok(NewHeader {
        bytes: out,
        payload: keys.payload,
        nonce_prefix,
    })
}

/// One recipient stanza as read from a header.
#[derive(Clone, Debug)]
pub(crate) struct Stanza {
    pub(crate) kind: u8,
    pub(crate) body: Vec<u8>,
}

/// A parsed (not yet authenticated) header.
#[derive(Clone, Debug)]
pub(crate) struct ParsedHeader {
    pub(crate) version: u8,
    pub(crate) chunk_size: u32,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub(crate) stanzas: Vec<Stanza>,
    /// Header bytes covered by the MAC (everything before it).
    pub(crate) authenticated: Vec<u8>,
    pub(crate) mac: [u8; MAC_LEN],
}

impl ParsedHeader {
    /// Total header length in bytes, MAC included.
    pub(crate) fn len(&self) -> usize {
        self.authenticated.len() + MAC_LEN
    }
}

fn read_exact_header<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), CryptError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CryptError::MalformedHeader("header truncated")
        } else {
            CryptError::Io(e)
        }
    })
}

/// Reads and parses a header from a stream, consuming exactly the header bytes. All lengths
/// are bounded before anything is allocated, so hostile input cannot make us allocate much.
pub(crate) fn read_header<R: Read>(r: &mut R) -> Result<ParsedHeader, CryptError> {
    let mut fixed = [0u8; FIXED_LEN];
    let (magic, after_magic) = fixed.split_at_mut(MAGIC.len());
    // Plaintext shorter than the magic is as much "not an object" as plaintext that is longer.
    match read_exact_header(r, magic) {
        Err(CryptError::MalformedHeader(_)) => return Err(CryptError::NotAnObject),
        other => other?,
    }
    if *magic != MAGIC {
        return Err(CryptError::NotAnObject);
    }
    read_exact_header(r, after_magic)?;
    let rest = &fixed[MAGIC.len()..];
    let (version, rest) = rest.split_at(1);
    let version = version.first().copied().unwrap_or(0);
    if version != VERSION {
        return Err(CryptError::UnsupportedVersion(version));
    }
    let (cs, rest) = rest.split_at(4);
    let chunk_size = u32::from_be_bytes(cs.try_into().map_err(|_| bad("chunk size"))?);
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(bad("chunk size out of range"));
    }
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (prefix, count) = rest.split_at(NONCE_PREFIX_LEN);
    let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| bad("salt"))?;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = prefix.try_into().map_err(|_| bad("nonce"))?;
    let count = usize::from(u16::from_be_bytes(
        count.try_into().map_err(|_| bad("stanza count"))?,
    ));
    if count == 0 || count > MAX_STANZAS {
        return Err(bad("stanza count must be 1..=256"));
    }

    let mut authenticated = Vec::with_capacity(FIXED_LEN + count * 100);
    authenticated.extend_from_slice(&fixed);
    let mut stanzas = Vec::with_capacity(count);
    for _ in 0..count {
        let mut sh = [0u8; 3];
        read_exact_header(r, &mut sh)?;
        let [kind, l0, l1] = sh;
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len > MAX_STANZA_BODY {
            return Err(bad("stanza body too large"));
        }
        let mut body = vec![0u8; len];
        read_exact_header(r, &mut body)?;
        authenticated.extend_from_slice(&sh);
        authenticated.extend_from_slice(&body);
        stanzas.push(Stanza { kind, body });
    }
    let mut mac = [0u8; MAC_LEN];
    read_exact_header(r, &mut mac)?;
    Ok(ParsedHeader {
        version,
        chunk_size,
        salt,
        nonce_prefix,
        stanzas,
        authenticated,
        mac,
    })
}

fn bad(what: &'static str) -> CryptError {
    CryptError::MalformedHeader(what)
}

/// Opens the header with `key`: finds a stanza that unwraps the file key, then verifies the
/// header MAC. Returns the payload key, and the sender if an Auth-mode stanza opened, only if
/// both succeed; with `senders` non-empty, only Auth stanzas naming one of them are tried.
pub(crate) fn open_header(
    header: &ParsedHeader,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<(LessSafeKey, Option<Recipient>), CryptError> {
    let binding_enc = binding.encode()?;
    let (file_key, sender) = unwrap_file_key(header, key, &binding_enc, senders)?;
    let keys = derive_object_keys(&file_key, &header.salt, &binding_enc)?;
    // Constant-time comparison inside aws-lc-rs. A stanza that opened but whose header fails
    // here is a refusal: no other stanza is tried.
    hmac::verify(&keys.mac, &header.authenticated, &header.mac).map_err(|_| CryptError::HeaderMac)?;
    Ok((
        keys.payload,
        sender.map(|pk| Recipient(RecipientKind::X25519(pk))),
    ))
}

/// Opens one HPKE stanza body `enc ‖ ct` with `identity` in `mode`; `None` if it does not open.
fn open_hpke(
    mode: &OpModeR<'_, Kem>,
    identity: &crate::Identity,
    body: &[u8],
    info: &[u8],
    salt: &[u8; SALT_LEN],
) -> Option<Zeroizing<[u8; FILE_KEY_LEN]>> {
    let (enc, ct) = body.split_at_checked(HPKE_ENC_LEN)?;
    if ct.len() != WRAPPED_LEN {
        return None;
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    let pt = Zeroizing::new(
        hpke::single_shot_open::<HpkeAead, HpkeKdf, Kem>(mode, &identity.sk, &enc, info, ct, salt).ok()?,
    );
    if pt.len() != FILE_KEY_LEN {
        return None;
    }
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    file_key.copy_from_slice(&pt);
    Some(file_key)
}

/// Splits an Auth stanza body into the sender's raw key and `enc ‖ ct`.
fn split_auth_body(body: &[u8]) -> Option<([u8; SENDER_KEY_LEN], &[u8])> {
    if body.len() != AUTH_BODY_LEN {
        return None;
    }
    let (sender, rest) = body.split_at_checked(SENDER_KEY_LEN)?;
    Some((sender.try_into().ok()?, rest))
}

type FileKey = Zeroizing<[u8; FILE_KEY_LEN]>;

/// Finds the stanza that gives `key` the file key, and the sender it authenticates, if any.
///
/// Stanzas are anonymous (as in age), so every candidate is tried. With `senders` non-empty the
/// only candidates are Auth stanzas naming one of them: Base-mode, symmetric and other senders'
/// stanzas are never tried, so adding or damaging stanzas cannot downgrade the object to one
/// that is accepted without the sender. Several stanzas may name an expected sender (one per
/// recipient of the object): one that does not open for this key is not the end, another of
/// them still may; none of them opening is a refusal. With no senders required, Auth stanzas
/// come first, so the sender is reported whenever one of them opens for this key.
fn unwrap_file_key(
    header: &ParsedHeader,
    key: DecryptionKey<'_>,
    binding_enc: &[u8],
    senders: &[Recipient],
) -> Result<(FileKey, Option<PublicKey>), CryptError> {
    let expected = senders
        .iter()
        .map(Recipient::sender_key)
        .collect::<Result<Vec<_>, _>>()?;
    match key {
        DecryptionKey::X25519(identity) => {
            let auth_info = [LABEL_HPKE_AUTH, binding_enc].concat();
            let (mut saw_expected, mut saw_other) = (false, false);
            for s in header
                .stanzas
                .iter()
                .filter(|s| s.kind == STANZA_X25519_HPKE_AUTH)
            {
                let Some((sender, sealed)) = split_auth_body(&s.body) else {
                    continue;
                };
                if !expected.is_empty() {
                    if !expected.contains(&sender) {
                        saw_other = true;
                        continue;
                    }
                    saw_expected = true;
                }
                let Ok(sender_pk) = PublicKey::from_bytes(&sender) else {
                    continue;
                };
                let mode = OpModeR::Auth(sender_pk.clone());
                if let Some(file_key) = open_hpke(&mode, identity, sealed, &auth_info, &header.salt) {
                    return Ok((file_key, Some(sender_pk)));
                }
            }
            if !expected.is_empty() {
                return Err(CryptError::SenderNotAuthenticated(if saw_expected {
                    "no stanza naming an expected sender opens with this key \
                     (tampered, sender key substituted, or not encrypted to this key)"
                } else if saw_other {
                    "the object is authenticated by a sender that is not expected"
                } else {
                    "the object carries no sender authentication (encrypted without a sender)"
                }));
            }
            let info = [LABEL_HPKE, binding_enc].concat();
            for s in header.stanzas.iter().filter(|s| s.kind == STANZA_X25519_HPKE) {
                if let Some(file_key) = open_hpke(&OpModeR::Base, identity, &s.body, &info, &header.salt) {
                    return Ok((file_key, None));
                }
            }
        }
        DecryptionKey::Symmetric(_) if !expected.is_empty() => {
            return Err(CryptError::SenderNotAuthenticated(
                "a symmetric key cannot authenticate a sender",
            ));
        }
        DecryptionKey::Symmetric(sym) => {
            let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
            let want = sym.id().as_bytes();
            for s in header.stanzas.iter().filter(|s| s.kind == STANZA_SYMMETRIC) {
                let Some((&id_len, rest)) = s.body.split_first() else {
                    continue;
                };
                let Some((id, wrapped)) = rest.split_at_checked(usize::from(id_len)) else {
                    continue;
                };
                if id != want || wrapped.len() != WRAPPED_LEN {
                    continue;
                }
                let wrap = symmetric_wrap_key(sym, &header.salt, binding_enc)?;
                let mut buf = Zeroizing::new([0u8; WRAPPED_LEN]);
                buf.copy_from_slice(wrapped);
                if let Ok(pt) = wrap.open_in_place(
                    Nonce::assume_unique_for_key([0u8; 12]),
                    Aad::empty(),
                    &mut buf[..],
                ) && pt.len() == FILE_KEY_LEN
                {
                    file_key.copy_from_slice(pt);
                    return Ok((file_key, None));
                }
            }
        }
    }
    Err(CryptError::NoMatchingRecipient)
}

/// Public facts about an object's header, readable without any key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Format version.
    pub version: u8,
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Length of the header in bytes (the first chunk starts here).
    pub header_len: usize,
    /// One entry per recipient stanza, in header order.
    pub recipients: Vec<RecipientInfo>,
}

/// What `inspect` can tell about one recipient stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientInfo {
    /// An HPKE/X25519 stanza (anonymous: the public key is not recorded).
    X25519,
    /// An HPKE Auth-mode X25519 stanza: the recipient is anonymous, the sender is named. The
    /// name is not authenticated here: only a decryption that opens the stanza proves it.
    X25519Auth {
        /// The sender's public key as the stanza names it (`cloister1x25519:…`).
        sender: String,
    },
    /// A symmetric stanza and its key id.
    Symmetric {
        /// The key id as stored (lossily decoded as UTF-8).
        key_id: String,
    },
    /// A stanza of a kind this build does not know, or of a known kind with a malformed body
    /// (skipped when decrypting).
    Unknown {
        /// The stanza kind byte.
        kind: u8,
    },
}

/// Parses the header at the start of `bytes` (which may continue with chunks) and reports its
/// public facts. No key is needed and nothing is authenticated.
pub fn inspect(bytes: &[u8]) -> Result<HeaderInfo, CryptError> {
    let mut r = bytes;
    let h = read_header(&mut r)?;
    let recipients = h
        .stanzas
        .iter()
        .map(|s| match s.kind {
            STANZA_X25519_HPKE => RecipientInfo::X25519,
            STANZA_X25519_HPKE_AUTH => match split_auth_body(&s.body) {
                Some((sender, _)) => RecipientInfo::X25519Auth {
                    sender: format!("{}{}", crate::RECIPIENT_PREFIX, hex::encode(sender)),
                },
                None => RecipientInfo::Unknown { kind: s.kind },
            },
            STANZA_SYMMETRIC => {
                let id = s
                    .body
                    .split_first()
                    .and_then(|(&n, rest)| rest.get(..usize::from(n)))
                    .unwrap_or_default();
                RecipientInfo::Symmetric {
                    key_id: String::from_utf8_lossy(id).into_owned(),
                }
            }
            kind => RecipientInfo::Unknown { kind },
        })
        .collect();
    Ok(HeaderInfo {
        version: h.version,
        chunk_size: h.chunk_size,
        header_len: h.len(),
        recipients,
    })
}
