//! The manifest parser alone (the whole-file target rarely gets past the manifest digest):
//! canonical-form check, field types, chunk table and reference validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak::artifact::format::{Header, Manifest};

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data, data.len() as u64);
    let _ = Manifest::parse(data, 128, 1 << 40);
});
