//! Validation of bucket names and object keys.
//!
//! Keys never become paths: the store names data by object id, and job runtimes take only a
//! key's last segment, refusing `.`/`..`/empty ones. So every S3 key is accepted — folder
//! markers (`dir/`), `a` beside `a/b`, `//`, `.` and `..` segments — except keys longer than
//! S3's 1,024-byte limit and keys with control characters, which XML 1.0 listings cannot carry.

use crate::StorageError;

/// S3's limit on the UTF-8 length of an object key.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a bucket name against S3's naming rules (3–63 characters of lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, no `..`, not an IP address).
pub fn validate_bucket_name(name: &str) -> Result<(), StorageError> {
    let invalid = |reason: &str| {
        Err(StorageError::InvalidName(format!(
            "bucket name {name:?}: {reason}"
        )))
    };
    if !(3..=63).contains(&name.len()) {
        return invalid("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return invalid("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(name.bytes().next()) || !edge_ok(name.bytes().last()) {
        return invalid("must start and end with a letter or digit");
    }
    if name.contains("..") {
        return invalid("must not contain '..'");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return invalid("must not look like an IP address");
    }
    Ok(())
}

/// Checks an object key: 1 to 1,024 bytes of UTF-8 without control characters.
pub fn validate_object_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: &str| {
        Err(StorageError::InvalidName(format!(
            "object key {:?}: {reason}",
            key.chars().take(80).collect::<String>()
        )))
    };
    if key.is_empty() {
        return invalid("must not be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return invalid("must not contain NUL or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for key in [
            "a",
            "in/photo.jpg",
            "x/y/z.tar.gz",
            "..hidden",
            "a..b/c",
            "ünïcode/ключ",
        ] {
            assert!(validate_object_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn accepts_every_s3_key_but_empty_overlong_or_control() {
        for key in [
            "/etc/passwd",
            "../x",
            "a/../b",
            ".",
            "a//b",
            "a/",
            "//",
            "back\\slash",
        ] {
            assert!(validate_object_key(key).is_ok(), "{key:?} refused");
        }
        for key in ["", "nul\0byte", "tab\tkey"] {
            assert!(validate_object_key(key).is_err(), "{key:?} accepted");
        }
        assert!(validate_object_key(&"k".repeat(1025)).is_err());
        assert!(validate_object_key(&"k".repeat(1024)).is_ok());
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my-bucket.1", "0day"] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            "a_b",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad} accepted");
        }
    }
}
