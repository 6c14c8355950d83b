//! The invariants the fuzz targets check, one module per target. Each `check` takes the raw
//! fuzzer input and panics when an invariant breaks.
//!
//! The same functions replay the kept corpora and crash inputs in the main crate's
//! `tests/fuzz_corpus.rs`, which includes this folder by path, so that `cargo test` runs them
//! without cargo-fuzz or a nightly compiler.

pub mod ids;
pub mod proofs;
pub mod sniff;
pub mod wire;
