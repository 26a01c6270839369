//! Header, manifest and signature-block parsing of `.tnpk` files: any input gives an
//! error or an artifact, never a panic or an unbounded allocation. When it opens, every
//! tensor is loaded too (chunk verification and codec decoding on hostile bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;

fuzz_target!(|data: &[u8]| {
    if let Ok(art) = Artifact::open(Box::new(MemorySource::new(data.to_vec()))) {
        let names: Vec<String> = art.manifest().tensors.iter().map(|t| t.name.clone()).collect();
        for n in names {
            let _ = art.load_tensor(&n);
        }
        let _ = art.signers();
    }
});
