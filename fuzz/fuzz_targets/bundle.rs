//! The bundle reader: any bytes as a policy bundle archive (gzip'd tar), refused or read
//! within its limits, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onbehalf::policy::bundle::{Bundle, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_archive_bytes: 1 << 16,
        max_content_bytes: 1 << 20,
    };
    if let Ok(bundle) = Bundle::from_tar_gz(data, limits) {
        let total: usize = bundle.files().values().map(Vec::len).sum();
        assert!(total as u64 <= limits.max_content_bytes);
        let _ = bundle.manifest();
    }
});
