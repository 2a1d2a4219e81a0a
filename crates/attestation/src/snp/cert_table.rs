//! The certificate table the host hands an SEV-SNP guest with an extended report (GHCB spec
//! 56421, section "SNP Extended Guest Request"; Linux configfs-tsm's `auxblob` for `sev_guest`).
//!
//! Layout: entries of GUID (16 bytes) ‖ offset (u32 LE) ‖ length (u32 LE), terminated by an
//! all-zero entry; each offset counts from the start of the table. The GUID bytes are the
//! GUID's text form in order (as `uuid_parse` and virtee/sev write them). The host writes the
//! table, so nothing in it is trusted: every offset and length is checked, and the
//! certificates it yields are only candidates that the verifier checks against AMD's roots.

use der::{Decode as _, Reader as _, SliceReader};
use x509_cert::Certificate;

use crate::Error;

/// VCEK (GHCB spec table "Certificate GUIDs"); the text GUID 63da758d-e664-4564-adc5-f4b93be8accd.
const GUID_VCEK: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// VLEK: a8074bc2-a25a-483e-aae6-39c045a0b8a1.
const GUID_VLEK: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
/// ASK: 4ab7b379-bbac-4fe4-a02f-05aef327c782.
const GUID_ASK: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// ARK: c0b406a4-a803-4952-9743-3fb6014cd0ae.
const GUID_ARK: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];

const ENTRY_LEN: usize = 24;
/// Larger than any real table (the kernel's certificate buffer starts at 16 KiB) and small
/// enough that a hostile one costs nothing.
pub(crate) const MAX_TABLE_LEN: usize = 1 << 20;
/// Real tables have four or five entries (VCEK or VLEK, ASK, ARK, perhaps a CRL).
const MAX_ENTRIES: usize = 64;

/// The AMD certificates found in a table, as DER without the padding some hosts add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CertTable {
    pub(crate) vcek: Option<Vec<u8>>,
    pub(crate) vlek: Option<Vec<u8>>,
    pub(crate) ask: Option<Vec<u8>>,
    pub(crate) ark: Option<Vec<u8>>,
}

fn malformed(reason: impl std::fmt::Display) -> Error {
    Error::malformed("SEV-SNP certificate table", reason)
}

fn guid_text(guid: &[u8; 16]) -> String {
    let h = hex::encode(guid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses `blob`. Entries with other GUIDs (a CRL, vendor data) are checked like the others and
/// then skipped. Refused: a blob larger than [`MAX_TABLE_LEN`], no terminator, more than
/// [`MAX_ENTRIES`] entries, a known GUID twice, an entry that is empty, reaches into the table
/// or past the blob, or overlaps another, and a known certificate that is not one DER
/// certificate (optionally followed by zero padding).
pub(crate) fn parse(blob: &[u8]) -> Result<CertTable, Error> {
    if blob.len() > MAX_TABLE_LEN {
        return Err(malformed(format!(
            "{} bytes, more than the {MAX_TABLE_LEN} accepted",
            blob.len()
        )));
    }
    let mut entries: Vec<([u8; 16], usize, usize)> = Vec::new();
    let mut table_end = None;
    for (index, entry) in blob.chunks_exact(ENTRY_LEN).enumerate() {
        if entry.iter().all(|&b| b == 0) {
            table_end = Some((index + 1) * ENTRY_LEN);
            break;
        }
        if index >= MAX_ENTRIES {
            return Err(malformed(format!("more than {MAX_ENTRIES} entries")));
        }
        let field = |range: std::ops::Range<usize>| -> Result<&[u8], Error> {
            entry.get(range).ok_or_else(|| malformed("truncated entry"))
        };
        let guid: [u8; 16] = field(0..16)?
            .try_into()
            .map_err(|_| malformed("truncated entry"))?;
        let word = |range| -> Result<usize, Error> {
            let bytes: [u8; 4] = field(range)?
                .try_into()
                .map_err(|_| malformed("truncated entry"))?;
            usize::try_from(u32::from_le_bytes(bytes)).map_err(|_| malformed("offset out of range"))
        };
        let (offset, length) = (word(16..20)?, word(20..24)?);
        if guid == [0; 16] {
            return Err(malformed(format!(
                "entry {index} has the terminator's zero GUID but a non-zero offset or length"
            )));
        }
        entries.push((guid, offset, length));
    }
    let table_end = table_end.ok_or_else(|| malformed("no all-zero terminating entry"))?;

    let mut spans: Vec<(usize, usize, [u8; 16])> = Vec::with_capacity(entries.len());
    for (index, &(guid, offset, length)) in entries.iter().enumerate() {
        let end = offset.checked_add(length).ok_or_else(|| {
            malformed(format!(
                "entry {index} ({}): offset + length overflows",
                guid_text(&guid)
            ))
        })?;
        if length == 0 {
            return Err(malformed(format!(
                "entry {index} ({}) is empty",
                guid_text(&guid)
            )));
        }
        if offset < table_end {
            return Err(malformed(format!(
                "entry {index} ({}) starts at {offset}, inside the table (which ends at {table_end})",
                guid_text(&guid)
            )));
        }
        if end > blob.len() {
            return Err(malformed(format!(
                "entry {index} ({}) spans {offset}..{end}, past the end of the {}-byte blob",
                guid_text(&guid),
                blob.len()
            )));
        }
        if let Some((start, stop, other)) = spans.iter().find(|(s, e, _)| offset < *e && *s < end) {
            return Err(malformed(format!(
                "entry {index} ({}) at {offset}..{end} overlaps {} at {start}..{stop}",
                guid_text(&guid),
                guid_text(other)
            )));
        }
        spans.push((offset, end, guid));
    }

    let mut table = CertTable::default();
    for (guid, offset, end) in spans.iter().map(|(s, e, g)| (*g, *s, *e)) {
        let slot = match guid {
            GUID_VCEK => &mut table.vcek,
            GUID_VLEK => &mut table.vlek,
            GUID_ASK => &mut table.ask,
            GUID_ARK => &mut table.ark,
            _ => continue,
        };
        if slot.is_some() {
            return Err(malformed(format!("{} appears twice", guid_text(&guid))));
        }
        let bytes = blob
            .get(offset..end)
            .ok_or_else(|| malformed("entry out of range"))?;
        *slot = Some(certificate(bytes, &guid)?);
    }
    Ok(table)
}

/// One DER certificate, with any zero padding after it removed.
fn certificate(bytes: &[u8], guid: &[u8; 16]) -> Result<Vec<u8>, Error> {
    let mut reader = SliceReader::new(bytes).map_err(malformed)?;
    Certificate::decode(&mut reader)
        .map_err(|e| malformed(format!("entry {} is not a DER certificate: {e}", guid_text(guid))))?;
    let used = usize::try_from(u32::from(reader.position())).map_err(malformed)?;
    let (der, rest) = bytes
        .split_at_checked(used)
        .ok_or_else(|| malformed("entry out of range"))?;
    if rest.iter().any(|&b| b != 0) {
        return Err(malformed(format!(
            "entry {} has {} bytes after its certificate that are not padding",
            guid_text(guid),
            rest.len()
        )));
    }
    Ok(der.to_vec())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A table with the given entries, the terminator, then the data in entry order.
    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let mut offset = (entries.len() + 1) * ENTRY_LEN;
        let mut head = Vec::new();
        let mut data = Vec::new();
        for (guid, bytes) in entries {
            head.extend_from_slice(guid);
            head.extend_from_slice(&u32::try_from(offset).unwrap().to_le_bytes());
            head.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
            data.extend_from_slice(bytes);
            offset += bytes.len();
        }
        head.extend_from_slice(&[0; ENTRY_LEN]);
        head.extend_from_slice(&data);
        head
    }

    #[test]
    fn guids_match_their_text_form() {
        assert_eq!(guid_text(&GUID_VCEK), "63da758d-e664-4564-adc5-f4b93be8accd");
        assert_eq!(guid_text(&GUID_VLEK), "a8074bc2-a25a-483e-aae6-39c045a0b8a1");
        assert_eq!(guid_text(&GUID_ASK), "4ab7b379-bbac-4fe4-a02f-05aef327c782");
        assert_eq!(guid_text(&GUID_ARK), "c0b406a4-a803-4952-9743-3fb6014cd0ae");
    }

    #[test]
    fn empty_table_and_unknown_entries() {
        assert_eq!(parse(&[0; ENTRY_LEN]).unwrap(), CertTable::default());
        // A CRL entry (unknown GUID) is bounds-checked and skipped.
        let crl = [0x92; 16];
        assert_eq!(parse(&table(&[(crl, b"crl")])).unwrap(), CertTable::default());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn a_certificate_that_is_not_der_is_refused() {
        let err = parse(&table(&[(GUID_VCEK, b"not a certificate")])).unwrap_err();
        assert!(err.to_string().contains("is not a DER certificate"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn hostile_tables_never_panic(blob in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&blob);
        }

        #[test]
        fn hostile_entries_never_panic(
            guid in prop_oneof![Just(GUID_VCEK), Just(GUID_VLEK), any::<[u8; 16]>()],
            offset in any::<u32>(),
            length in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut blob = guid.to_vec();
            blob.extend_from_slice(&offset.to_le_bytes());
            blob.extend_from_slice(&length.to_le_bytes());
            blob.extend_from_slice(&[0; ENTRY_LEN]);
            blob.extend_from_slice(&tail);
            let _ = parse(&blob);
        }
    }
}
