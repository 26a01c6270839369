//! GGUF header, metadata and tensor-table parsing on hostile bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tenpak::source::gguf::GgufFile::check_bytes(data);
});
