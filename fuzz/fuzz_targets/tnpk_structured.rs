//! Structure-aware `.tnpk` target: the input is `u32 LE manifest length | manifest JSON |
//! data region`; the target re-serialises the JSON canonically and lays the file out with
//! the manifest digest recomputed (`format::assemble`), so mutations reach the manifest's
//! validation, chunk verification and codec decoding instead of dying at the digest check
//! as random bytes do in `tnpk_open`. Seeds: real artifacts split that way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak::artifact::format::assemble;
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;

fuzz_target!(|data: &[u8]| {
    let Some(n) = data.get(..4) else { return };
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let Some(m) = data.get(4..4usize.saturating_add(n)) else {
        return;
    };
    let region = &data[4 + n..];
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(m) else {
        return;
    };
    let Ok(canonical) = serde_json::to_vec(&v) else {
        return;
    };
    let file = assemble(region, &canonical, &[]);
    if let Ok(art) = Artifact::open(Box::new(MemorySource::new(file))) {
        for t in &art.manifest().tensors {
            let _ = art.load_tensor(&t.name);
        }
        for f in &art.manifest().files {
            let _ = art.read_file(f);
        }
    }
});
