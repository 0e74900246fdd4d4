//! Random identifiers: `jti`s, transaction ids, decision ids.

use std::time::SystemTime;

use crate::jose::b64;

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system generator does not fail on supported platforms; a clock-derived id is
        // still unique per process, which is all `jti` and `txn` need.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn random_id() -> String {
    b64(&random_bytes())
}

/// A random (version 4) UUID, as Envoy writes `x-request-id`.
pub fn uuid_v4() -> String {
    use std::fmt::Write as _;
    let mut b = random_bytes();
    if let Some(x) = b.get_mut(6) {
        *x = (*x & 0x0f) | 0x40;
    }
    if let Some(x) = b.get_mut(8) {
        *x = (*x & 0x3f) | 0x80;
    }
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{x:02x}");
    }
    out
}
