//! Binding a verifier's nonce and the workload's public key into the report data.

use sha2::{Digest, Sha512};

use crate::Error;
use crate::evidence::hex;

/// The 64 bytes of report data that bind a workload's `public_key` to a verifier's `nonce`:
/// `SHA-512(nonce ‖ public_key)`.
///
/// Use a fixed-length nonce (e.g. 32 random bytes): with plain concatenation a variable-length
/// nonce could shift bytes between the two parts.
pub fn report_data_for(nonce: &[u8], public_key: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(nonce);
    h.update(public_key);
    h.finalize().into()
}

/// Checks that `report_data` (from verified evidence) equals [`report_data_for`]`(nonce,
/// public_key)`; otherwise returns [`Error::ReportDataMismatch`].
pub fn check_report_data(report_data: &[u8], nonce: &[u8], public_key: &[u8]) -> Result<(), Error> {
    let expected = report_data_for(nonce, public_key);
    if report_data == expected.as_slice() {
        Ok(())
    } else {
        Err(Error::ReportDataMismatch {
            expected: hex(&expected),
            actual: hex(report_data),
        })
    }
}
