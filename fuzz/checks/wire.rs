//! Wire payloads: what `header` and `bare` build, read back by a decoder written from the
//! layout `wire.rs` documents (and pixstore 3.x browsers read), gives back what went in.
//!
//! Success is `[0]` and the ciphertext. Updated is `[1]`, the token as a little-endian `u64`,
//! the 32-byte key, 12-byte IV and 16-byte tag, then the ciphertext. Not found, missing id,
//! missing proof, invalid proof and internal error are the single bytes 2 to 6.

use arbitrary::{Arbitrary, Unstructured};

use pixstore::core::crypto::{Meta, IV_LEN, KEY_LEN, TAG_LEN};
use pixstore::core::wire::{bare, header, WireState, UPDATED_HEADER_LEN};

/// What one payload carries, as the fuzzer makes it.
#[derive(Arbitrary, Debug)]
pub struct Input {
  token_matches: bool,
  token: u64,
  key: [u8; KEY_LEN],
  iv: [u8; IV_LEN],
  tag: [u8; TAG_LEN],
  bare_state: u8,
  ciphertext: Vec<u8>,
}

/// A payload as a browser reads it.
#[derive(Debug, PartialEq, Eq)]
enum Payload {
  Success {
    ciphertext: Vec<u8>,
  },
  Updated {
    token: u64,
    key: [u8; KEY_LEN],
    iv: [u8; IV_LEN],
    tag: [u8; TAG_LEN],
    ciphertext: Vec<u8>,
  },
  NotFound,
  MissingId,
  MissingProof,
  InvalidProof,
  InternalError,
}

const BARE: [(WireState, Payload); 5] = [
  (WireState::NotFound, Payload::NotFound),
  (WireState::MissingId, Payload::MissingId),
  (WireState::MissingProof, Payload::MissingProof),
  (WireState::InvalidProof, Payload::InvalidProof),
  (WireState::InternalError, Payload::InternalError),
];

pub fn check(data: &[u8]) {
  let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
    return;
  };

  let meta = Meta {
    key: input.key,
    iv: input.iv,
    tag: input.tag,
  };
  let mut payload = header(
    input.token_matches,
    input.token,
    &meta,
    input.ciphertext.len(),
  );
  assert!(
    payload.capacity() >= payload.len() + input.ciphertext.len(),
    "no room for the ciphertext"
  );
  payload.extend_from_slice(&input.ciphertext);
  let header_len = if input.token_matches {
    1
  } else {
    UPDATED_HEADER_LEN
  };
  assert_eq!(payload.len(), header_len + input.ciphertext.len());

  let expected = if input.token_matches {
    Payload::Success {
      ciphertext: input.ciphertext,
    }
  } else {
    Payload::Updated {
      token: input.token,
      key: input.key,
      iv: input.iv,
      tag: input.tag,
      ciphertext: input.ciphertext,
    }
  };
  assert_eq!(decode(&payload), Some(expected));

  let (state, expected) = &BARE[usize::from(input.bare_state) % BARE.len()];
  assert_eq!(decode(&bare(*state)).as_ref(), Some(expected));
}

fn decode(payload: &[u8]) -> Option<Payload> {
  let (&state, rest) = payload.split_first()?;
  let bare = |payload: Payload| rest.is_empty().then_some(payload);
  match state {
    0 => Some(Payload::Success {
      ciphertext: rest.to_vec(),
    }),
    1 => {
      // The layout's own sizes, not the crate's constants, so that a change to either shows.
      if rest.len() < 8 + 32 + 12 + 16 {
        return None;
      }
      let (token, rest) = rest.split_at(8);
      let (key, rest) = rest.split_at(32);
      let (iv, rest) = rest.split_at(12);
      let (tag, ciphertext) = rest.split_at(16);
      Some(Payload::Updated {
        token: u64::from_le_bytes(token.try_into().ok()?),
        key: key.try_into().ok()?,
        iv: iv.try_into().ok()?,
        tag: tag.try_into().ok()?,
        ciphertext: ciphertext.to_vec(),
      })
    }
    2 => bare(Payload::NotFound),
    3 => bare(Payload::MissingId),
    4 => bare(Payload::MissingProof),
    5 => bare(Payload::InvalidProof),
    6 => bare(Payload::InternalError),
    _ => None,
  }
}
