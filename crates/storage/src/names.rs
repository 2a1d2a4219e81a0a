//! Validation of bucket names and object keys.
//!
//! Keys are untrusted input that ends up as file-system paths in the embedded store and as
//! paths inside job sandboxes, so anything that could alias or escape is refused outright
//! instead of being normalised: `..` and `.` segments, empty segments (`a//b`), a leading `/`,
//! NUL and other control characters, and keys longer than S3's 1,024-byte limit.

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

/// Checks an object key; see the module documentation for what is refused and why.
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
    if key.starts_with('/') {
        return invalid("must not be an absolute path");
    }
    if key.contains('\\') {
        return invalid("must not contain '\\'");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("must not contain empty path segments or end with '/'"),
            "." | ".." => return invalid("must not contain '.' or '..' segments"),
            _ => {}
        }
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
    fn refuses_escaping_or_aliasing_keys() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "nul\0byte",
            "tab\tkey",
            "back\\slash",
        ] {
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
