//! Proofs, on any id, proof string, secret, window and times. `verify` never panics and accepts
//! nothing but the very string `issue` makes for that id, under that secret, in the current or
//! the previous window. An issued proof is 22 URL-safe base64 characters and verifies in
//! exactly those two windows; changed in any way, given for another id or checked under another
//! secret, it does not.

use arbitrary::{Arbitrary, Unstructured};

use pixstore::core::proofs::{ProofKey, Window, SECRET_LEN};

#[derive(Arbitrary, Debug)]
pub struct Input {
  secret: [u8; SECRET_LEN],
  /// `None` is a window that never ends; zero stands for one millisecond, as configuration
  /// admits no shorter window.
  window_len: Option<u64>,
  issued_at: u64,
  /// When the issued proof is checked, relative to `issued_at`.
  checked_after: i64,
  id: String,
  other_id: String,
  /// A proof string from anywhere, checked at `issued_at`.
  given: String,
  /// Changes made to the issued proof.
  edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
  Replace { at: u8, with: char },
  Insert { at: u8, with: char },
  Remove { at: u8 },
}

pub fn check(data: &[u8]) {
  let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
    return;
  };
  let key = ProofKey::new(input.secret);
  let window = match input.window_len {
    Some(len) => Window::Millis(len.max(1)),
    None => Window::Never,
  };
  let (id, at) = (input.id.as_str(), input.issued_at);

  let proof = key.issue(id, window, at);
  assert_eq!(proof.len(), 22, "{proof}");
  assert!(
    proof
      .bytes()
      .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
    "{proof}"
  );
  assert!(key.verify(id, &proof, window, at), "refused when issued");

  if let Some(later) = at.checked_add_signed(input.checked_after) {
    assert_eq!(
      key.verify(id, &proof, window, later),
      in_current_or_next_window(window, at, later),
      "issued at {at}, checked at {later}"
    );
  }

  assert_accepts_only_issued(&key, id, &input.given, window, at);

  let mut edited: Vec<char> = proof.chars().collect();
  for edit in &input.edits {
    apply(edit, &mut edited);
  }
  let edited: String = edited.into_iter().collect();
  assert_accepts_only_issued(&key, id, &edited, window, at);

  if input.other_id != input.id {
    assert!(
      !key.verify(&input.other_id, &proof, window, at),
      "the proof of {id:?} verifies for {:?}",
      input.other_id
    );
  }
  let mut other_secret = input.secret;
  other_secret[0] ^= 1;
  assert!(
    !ProofKey::new(other_secret).verify(id, &proof, window, at),
    "verifies under another secret"
  );
}

/// Whether `later` falls in the window of `issued_at` or in the one after it.
fn in_current_or_next_window(window: Window, issued_at: u64, later: u64) -> bool {
  match window {
    Window::Never => true,
    Window::Millis(len) => {
      let (issued, now) = (issued_at / len, later / len);
      now == issued || now.checked_sub(1) == Some(issued)
    }
  }
}

/// `proof` is accepted at `now` only when it is, character for character, the proof issued for
/// `id` now or one window earlier.
fn assert_accepts_only_issued(key: &ProofKey, id: &str, proof: &str, window: Window, now: u64) {
  if !key.verify(id, proof, window, now) {
    return;
  }
  let earlier = match window {
    Window::Millis(len) => now.checked_sub(len),
    Window::Never => None,
  };
  let mut issued = std::iter::once(now)
    .chain(earlier)
    .map(|at| key.issue(id, window, at));
  assert!(
    issued.any(|issued| issued == proof),
    "accepted {proof:?} for {id:?}, which was not issued"
  );
}

fn apply(edit: &Edit, proof: &mut Vec<char>) {
  let len = proof.len();
  match *edit {
    Edit::Replace { at, with } if len > 0 => proof[usize::from(at) % len] = with,
    Edit::Insert { at, with } => proof.insert(usize::from(at) % (len + 1), with),
    Edit::Remove { at } if len > 0 => {
      proof.remove(usize::from(at) % len);
    }
    _ => {}
  }
}
