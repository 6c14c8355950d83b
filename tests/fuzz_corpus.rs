//! Replays the fuzz corpora and every kept crash input through the fuzz targets' checks, so that
//! plain `cargo test` catches a regression on any input fuzzing once found, without cargo-fuzz
//! or a nightly compiler. `scripts/fuzz.sh` runs the targets themselves.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

#[path = "../fuzz/checks/mod.rs"]
mod checks;

/// Runs `check` on every file of `fuzz/corpus/<target>` and `fuzz/artifacts/<target>`, and
/// fails naming each input that breaks an invariant.
fn replay(target: &str, check: fn(&[u8])) {
  let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
  let mut inputs = Vec::new();
  for folder in ["corpus", "artifacts"] {
    let Ok(entries) = fs::read_dir(fuzz.join(folder).join(target)) else {
      continue;
    };
    inputs.extend(entries.map(|entry| entry.expect("a readable folder").path()));
  }
  inputs.sort();
  assert!(!inputs.is_empty(), "no inputs in fuzz/corpus/{target}");

  let failed: Vec<String> = inputs
    .iter()
    .filter_map(|input| {
      let data = fs::read(input).expect("a readable input");
      let broken = panic::catch_unwind(AssertUnwindSafe(|| check(&data))).err()?;
      let why = broken
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| broken.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
      Some(format!("{}: {why}", input.display()))
    })
    .collect();
  assert!(
    failed.is_empty(),
    "{} of {} inputs break the {target} checks:\n{}",
    failed.len(),
    inputs.len(),
    failed.join("\n")
  );
}

#[test]
fn sniff_corpus() {
  replay("sniff", checks::sniff::check);
}

#[test]
fn ids_corpus() {
  replay("ids", checks::ids::check);
}

#[test]
fn wire_corpus() {
  replay("wire", checks::wire::check);
}

#[test]
fn proofs_corpus() {
  replay("proofs", checks::proofs::check);
}
