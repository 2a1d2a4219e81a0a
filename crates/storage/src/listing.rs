//! Listings straight from the index: keys in byte order, a delimiter folding keys into common
//! prefixes (skipped over with one seek each), markers, tokens and `encoding-type=url`.

use std::ops::Bound;

use crate::index::Db as _;
use base64::Engine;
use s3s::dto::{CommonPrefix, EncodingType};
use s3s::{S3Result, s3_error};

use crate::index::{IndexError, ObjectRecord, decode, objects_table, objects_table_name};
use crate::store::{Core, bucket_record};

/// What a listing asks for.
pub(crate) struct ListParams<'a> {
    pub prefix: &'a str,
    /// `None` also for an empty delimiter, which S3 treats as none.
    pub delimiter: Option<&'a str>,
    /// Exclusive start: a marker, start-after or continuation point.
    pub after: Option<String>,
    pub max_keys: usize,
    asked_max: Option<i32>,
}

impl<'a> ListParams<'a> {
    pub(crate) fn new(
        prefix: Option<&'a str>,
        delimiter: Option<&'a str>,
        after: Option<String>,
        max_keys: Option<i32>,
    ) -> S3Result<Self> {
        if max_keys.is_some_and(|n| n < 0) {
            return Err(s3_error!(InvalidArgument, "max-keys must not be negative"));
        }
        Ok(Self {
            prefix: prefix.unwrap_or(""),
            delimiter: delimiter.filter(|d| !d.is_empty()),
            after: after.filter(|a| !a.is_empty()),
            max_keys: max_keys.map_or(1000, |n| usize::try_from(n.min(1000)).unwrap_or(1000)),
            asked_max: max_keys,
        })
    }

    pub(crate) fn max_keys_echo(&self) -> i32 {
        self.asked_max.unwrap_or(1000)
    }
}

/// One page of a listing.
pub(crate) struct Listed {
    pub objects: Vec<(String, ObjectRecord)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix on the page: where the next page starts after.
    pub last: Option<String>,
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = prefix.to_vec();
    while let Some(last) = bytes.pop() {
        if last < u8::MAX {
            bytes.push(last + 1);
            return Some(bytes);
        }
    }
    None
}

impl Core {
    pub(crate) fn list(&self, bucket: &str, params: &ListParams<'_>) -> S3Result<Listed> {
        let txn = self.index.read()?;
        bucket_record(&txn, bucket)?;
        let mut listed = Listed {
            objects: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
            last: None,
        };
        let name = objects_table_name(bucket);
        let table = match txn.open_table(objects_table(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(listed),
            Err(e) => return Err(IndexError::from(e).into()),
        };
        let prefix = params.prefix.as_bytes();
        let mut start: Bound<Vec<u8>> = match &params.after {
            Some(after) if after.as_bytes() >= prefix => Bound::Excluded(after.as_bytes().to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let after = params.after.as_deref().unwrap_or("");
        'pages: loop {
            let mut resume = None;
            let range = (start.as_ref().map(Vec::as_slice), Bound::Unbounded::<&[u8]>);
            for entry in table.range::<&[u8]>(range).db()? {
                let (k, v) = entry.db()?;
                let key_bytes = k.value();
                if !key_bytes.starts_with(prefix) {
                    break 'pages;
                }
                let key = String::from_utf8(key_bytes.to_vec())
                    .map_err(|_| s3_error!(InternalError, "a stored key is not UTF-8"))?;
                let folded = params.delimiter.and_then(|d| {
                    key.get(params.prefix.len()..)
                        .and_then(|rest| rest.find(d))
                        .map(|i| key[..params.prefix.len() + i + d.len()].to_owned())
                });
                if let Some(common) = folded {
                    // A marker inside this common prefix means the prefix was already listed.
                    if !(after.starts_with(common.as_str()) || common.as_str() <= after) {
                        if listed.objects.len() + listed.prefixes.len() == params.max_keys {
                            listed.truncated = true;
                            break 'pages;
                        }
                        listed.last = Some(common.clone());
                        listed.prefixes.push(common.clone());
                    }
                    match successor(common.as_bytes()) {
                        Some(next) => {
                            resume = Some(next);
                            break;
                        }
                        None => break 'pages,
                    }
                }
                if listed.objects.len() + listed.prefixes.len() == params.max_keys {
                    listed.truncated = true;
                    break 'pages;
                }
                listed.objects.push((key.clone(), decode(v.value())?));
                listed.last = Some(key);
            }
            match resume {
                Some(next) => start = Bound::Included(next),
                None => break,
            }
        }
        if params.max_keys == 0 {
            listed.truncated = false;
        }
        Ok(listed)
    }
}

pub(crate) fn url_encoding(encoding: Option<&EncodingType>) -> S3Result<bool> {
    match encoding.map(EncodingType::as_str) {
        None => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("url") => Ok(true),
        Some(other) => Err(s3_error!(
            InvalidArgument,
            "unknown encoding type {other:?}: only \"url\" exists"
        )),
    }
}

/// Percent-encodes all but unreserved characters and `/`, as S3 does for `encoding-type=url`.
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub(crate) fn encode_if(url: bool, s: &str) -> String {
    if url {
        percent_encoding::utf8_percent_encode(s, KEY_ENCODE).to_string()
    } else {
        s.to_owned()
    }
}

pub(crate) fn common_prefixes(prefixes: &[String], url: bool) -> Option<Vec<CommonPrefix>> {
    (!prefixes.is_empty()).then(|| {
        prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode_if(url, p)),
            })
            .collect()
    })
}

/// Continuation tokens are the last listed name, opaque to clients.
pub(crate) fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

pub(crate) fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "the continuation token is not valid"))
}

/// `x-amz-copy-source-range: bytes=first-last` (both required, inclusive).
pub(crate) fn parse_copy_range(spec: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let invalid = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last within the object"
        )
    };
    let (first, last) = spec
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if first > last || last >= size {
        return Err(s3_error!(
            InvalidRange,
            "the copy range is outside the source object"
        ));
    }
    Ok(first..last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_skip_every_string_with_the_prefix() {
        assert_eq!(successor(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
    }

    #[test]
    fn keys_are_url_encoded_as_s3_does() {
        assert_eq!(encode_if(true, "a b+c/ü%.txt"), "a%20b%2Bc/%C3%BC%25.txt");
        assert_eq!(encode_if(false, "a b"), "a b");
    }

    #[test]
    fn copy_ranges_must_lie_within_the_source() {
        assert_eq!(parse_copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert!(parse_copy_range("bytes=5-10", 10).is_err());
        assert!(parse_copy_range("bytes=5-4", 10).is_err());
        assert!(parse_copy_range("0-4", 10).is_err());
    }
}
