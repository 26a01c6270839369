//! A model's `config.json` as the runtime reads it (untrusted: it comes from any Hub
//! repository the registry packs or evaluates). Must be a typed error or a config whose
//! sizes are within the caps, never an abort from an allocation sized by the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak::runtime::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(c) = ModelConfig::from_hf(&v) {
        assert!(c.layers <= 1 << 10 && c.hidden <= 1 << 17 && c.vocab <= 1 << 23);
        assert_eq!(c.sliding.len(), c.layers);
    }
});
