//! The registry's webhook path without the network: payload parse, then the decision
//! (`tenpak-hooks`), under the default policy and one that allows private repos. A
//! decision to compress must name an `owner/name` repo and a full 40-hex commit, whatever
//! the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenpak_hooks::{decide, is_commit, Decision, Payload, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Payload::parse(data) else {
        return;
    };
    for allow_private in [false, true] {
        let policy = Policy {
            allow_private,
            ..Policy::default()
        };
        if let Decision::Compress {
            repo,
            revision,
            idempotency_key,
        } = decide(&p, &policy)
        {
            assert!(is_commit(&revision), "compress at {revision:?}");
            assert_eq!(repo.matches('/').count(), 1, "repo {repo:?}");
            assert!(!idempotency_key.is_empty());
        }
    }
});
