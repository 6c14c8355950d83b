//! AES-256-GCM throughput of this crate's sealing function (`core::crypto::seal`: fresh key and IV,
//! one copy, encryption in place), on one thread. Prints one JSON line. Used by `npm run bench`.
//!
//!   cargo run --release --example aes_speed [bytes per call]

use std::time::Instant;

fn main() {
  let size: usize = std::env::args()
    .nth(1)
    .and_then(|arg| arg.parse().ok())
    .unwrap_or(1 << 20);
  let image = vec![0x5au8; size];
  let start = Instant::now();
  let mut calls = 0u64;
  let mut check = 0u64;
  while start.elapsed().as_secs_f64() < 1.0 {
    let (ciphertext, meta) = pixstore::core::crypto::seal(3, &image);
    check = check.wrapping_add(u64::from(ciphertext[0]) + u64::from(meta.tag[0]));
    calls += 1;
  }
  let seconds = start.elapsed().as_secs_f64();
  println!(
    "{{\"bytesPerCall\":{size},\"calls\":{calls},\"seconds\":{seconds:.3},\"bytesPerSecond\":{:.0},\"check\":{check}}}",
    (calls as f64) * (size as f64) / seconds
  );
}
