//! The Range / If-Range decision every range-served artifact goes through (the registry's
//! `/artifact`, the Hub-compatible `resolve`, `tenpak serve`). Input: `range\nif-range\nlen`.
//! A partial answer must lie inside the representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak::serve::range::{decide, RangeDecision};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let range = parts.next();
    let if_range = parts.next().filter(|s| !s.is_empty());
    let len = parts
        .next()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if let RangeDecision::Partial { start, end } = decide(range, if_range, "\"etag\"", len) {
        assert!(start <= end && end < len, "{start}-{end} of {len}");
    }
});
