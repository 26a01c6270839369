//! Codec decoding of hostile encodings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tenpak::codec::decode_vec(data);
});
