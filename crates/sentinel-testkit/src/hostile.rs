//! Proptest support shared by the hostile-input properties of every crate:
//! one case count and one byte-mutation strategy.
//!
//! # Example
//!
//! ```
//! use proptest::prelude::*;
//! use proptest::test_runner::TestRunner;
//! use sentinel_testkit::hostile;
//!
//! let mut runner = TestRunner::new(hostile::config());
//! let documents = hostile::mutated(Just(b"{\"tier\":\"simple\"}".to_vec()));
//! runner
//!     .run(&documents, |bytes| {
//!         // Whatever the bytes, reading them never panics.
//!         let _ = serde_json::from_slice::<serde_json::Value>(&bytes);
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm};

/// Cases per property: `PROPTEST_CASES` when set (the longer run), else
/// 2048.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

/// [`cases`] cases with the XorShift RNG: ChaCha, proptest's default, is
/// most of a debug build's generation time. (`Config::with_cases` would
/// override `PROPTEST_CASES`.)
pub fn config() -> Config {
    Config {
        cases: cases(),
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    }
}

/// `bytes` with one to three bytes replaced, inserted or removed, drawn
/// from JSON's punctuation, digits, the letters of its literals and bytes
/// that are not UTF-8 on their own.
pub fn mutated(bytes: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(b"{}[]\":,\\ 0159e-.ntu\xff\xc3\x00".to_vec());
    (
        bytes,
        prop::collection::vec((any::<Index>(), 0u8..3, byte), 1..4),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, op, byte) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            bytes
        })
}
