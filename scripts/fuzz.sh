#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a while: scripts/fuzz.sh [seconds-per-target], 15 by
# default; PIXSTORE_FUZZ_SANITIZER=none for a faster build. Fails on the first crash, leaving the input in fuzz/artifacts/<target>/, where
# tests/fuzz_corpus.rs replays it once it is committed.
#
# The kept corpus in fuzz/corpus/<target>/ only seeds a run: what a run finds goes to
# fuzz/target/corpus/<target>/, so a run never changes tracked files. Stable Rust does here:
# RUSTC_BOOTSTRAP=1 lets it take the nightly flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-15}"
# AddressSanitizer by default; `none` builds in a third of the time, for the short run of
# `npm test` (the checks are the same; the core has next to no unsafe code for ASan to watch).
sanitizer="${PIXSTORE_FUZZ_SANITIZER:-address}"
targets=(sniff ids wire proofs)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== cargo fuzz build ($(cargo fuzz --version), sanitizer $sanitizer)"
started=$SECONDS
cargo fuzz build -s "$sanitizer"
echo "built in $((SECONDS - started)) s"

mkdir -p fuzz/target/logs
for target in "${targets[@]}"; do
  echo "== fuzz $target for $seconds s"
  corpus="fuzz/target/corpus/$target"
  log="fuzz/target/logs/$target.log"
  mkdir -p "$corpus"

  # An input that runs 30 s or runs out of memory counts as a crash too.
  if ! cargo fuzz run -s "$sanitizer" "$target" "$corpus" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -report_slow_units=30 -rss_limit_mb=2048 \
    >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz $target FAILED: the input is in fuzz/artifacts/$target/, the whole log in $log" >&2
    exit 1
  fi

  # libFuzzer's last status line: "#RUNS DONE cov: C ft: F corp: INPUTS/SIZE ... exec/s: R ...".
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 executions in \2 s/p' "$log")
  coverage=$(sed -E 's/.*(cov: [0-9]+).*(corp: [^ ]+).*(exec\/s: [0-9]+).*/\1, \2, \3/' <<<"$done_line")
  echo "$target: ${runs:-no count}, no crash ($coverage)"
done
