//! Stateless proofs: short-lived strings that authorise fetching one image.
//!
//! A proof is HMAC-SHA256 over the id and the time window, keyed by a secret kept in the store's
//! database. Every process on one store shares the secret, so a proof issued by one is accepted
//! by another, and after a restart.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SECRET_LEN: usize = 32;

/// Bytes of the HMAC kept in a proof: 128 bits, so a proof is 22 characters.
const PROOF_BYTES: usize = 16;

/// How long a proof lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
  /// Proofs of the current and the previous window of this many milliseconds are accepted.
  Millis(u64),
  /// `statelessKeyWindowLength: -1`: proofs never expire.
  Never,
}

impl Window {
  fn number(self, now_ms: u64) -> Option<u64> {
    match self {
      // The configuration never gives 0; a window of 0 ms counts as 1 rather than dividing by 0.
      Window::Millis(len) => Some(now_ms / len.max(1)),
      Window::Never => None,
    }
  }
}

/// The store's proof secret.
#[derive(Clone)]
pub struct ProofKey([u8; SECRET_LEN]);

impl std::fmt::Debug for ProofKey {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("ProofKey(..)")
  }
}

impl ProofKey {
  pub fn new(secret: [u8; SECRET_LEN]) -> Self {
    ProofKey(secret)
  }

  /// A name for the store that every process on it computes alike and that reveals nothing of
  /// the secret: how endpoints tell a process of their own store from another app on a port.
  pub fn store_identity(&self) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
    mac.update(b"pixstore endpoint identity");
    BASE64URL.encode(&mac.finalize().into_bytes()[..PROOF_BYTES])
  }

  /// The proof for `id` at `now_ms`.
  pub fn issue(&self, id: &str, window: Window, now_ms: u64) -> String {
    BASE64URL.encode(&self.mac(id, window.number(now_ms)).finalize().into_bytes()[..PROOF_BYTES])
  }

  /// Whether `proof` was issued for `id` in the current or the previous window. The comparison
  /// takes the same time whatever the proof holds.
  pub fn verify(&self, id: &str, proof: &str, window: Window, now_ms: u64) -> bool {
    let Ok(given) = BASE64URL.decode(proof) else {
      return false;
    };
    if given.len() != PROOF_BYTES {
      return false;
    }

    let windows: Vec<Option<u64>> = match window.number(now_ms) {
      Some(n) => [Some(n), n.checked_sub(1)]
        .into_iter()
        .flatten()
        .map(Some)
        .collect(),
      None => vec![None],
    };
    // Every candidate is checked, so the time taken does not tell which window matched.
    windows.into_iter().fold(false, |accepted, number| {
      accepted | self.mac(id, number).verify_truncated_left(&given).is_ok()
    })
  }

  fn mac(&self, id: &str, window_number: Option<u64>) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    // A NUL cannot stand in an id, so id and window never run together.
    mac.update(b"\0");
    match window_number {
      Some(n) => mac.update(n.to_string().as_bytes()),
      None => mac.update(b"never"),
    }
    mac
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const LEN: u64 = 20_000;

  fn key() -> ProofKey {
    ProofKey::new([7; SECRET_LEN])
  }

  #[test]
  fn accepts_current_and_previous_window_only() {
    let issued_at = 1_000 * LEN + 5;
    let proof = key().issue("a:b", Window::Millis(LEN), issued_at);
    assert_eq!(proof.len(), 22);

    for (now, accepted) in [
      (issued_at, true),
      (issued_at + LEN, true),
      (issued_at + 2 * LEN, false),
      (issued_at - LEN, false),
    ] {
      assert_eq!(
        key().verify("a:b", &proof, Window::Millis(LEN), now),
        accepted,
        "{now}"
      );
    }
  }

  #[test]
  fn rejects_other_ids_secrets_and_garbage() {
    let proof = key().issue("a", Window::Millis(LEN), 0);
    assert!(!key().verify("b", &proof, Window::Millis(LEN), 0));
    assert!(!ProofKey::new([8; SECRET_LEN]).verify("a", &proof, Window::Millis(LEN), 0));
    for garbage in ["", "%%%", "AAAA", &"A".repeat(10_000)] {
      assert!(!key().verify("a", garbage, Window::Millis(LEN), 0));
    }
  }

  #[test]
  fn never_expiring_proofs_hold_forever_and_differ_from_windowed_ones() {
    let proof = key().issue("a", Window::Never, 0);
    assert!(key().verify("a", &proof, Window::Never, u64::MAX));
    assert!(!key().verify("a", &proof, Window::Millis(LEN), 0));
  }
}
