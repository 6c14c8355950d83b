//! Wire payloads: what an endpoint sends a browser for one image request.
//!
//! The first byte is the state. Success carries the ciphertext; Updated carries the current
//! token (unsigned 64-bit little-endian), key, IV and tag before it; every other state is that
//! one byte. Byte-compatible with pixstore 3.x browsers.

use super::crypto::{Meta, IV_LEN, KEY_LEN, TAG_LEN};

/// The state byte of a wire payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WireState {
  /// The client's token is current: the ciphertext follows.
  Success = 0,
  /// The client's token is stale or absent: token, meta and ciphertext follow.
  Updated = 1,
  NotFound = 2,
  MissingId = 3,
  MissingProof = 4,
  InvalidProof = 5,
  InternalError = 6,
}

/// Bytes before the ciphertext in an Updated payload.
pub const UPDATED_HEADER_LEN: usize = 1 + 8 + KEY_LEN + IV_LEN + TAG_LEN;

/// A payload of a state without a body.
pub fn bare(state: WireState) -> Vec<u8> {
  debug_assert!(!matches!(state, WireState::Success | WireState::Updated));
  vec![state as u8]
}

/// The header of a Success or Updated payload, with room for `ciphertext_len` more bytes, so
/// that the file can be read straight in behind it.
pub fn header(token_matches: bool, token: u64, meta: &Meta, ciphertext_len: usize) -> Vec<u8> {
  if token_matches {
    let mut payload = Vec::with_capacity(1 + ciphertext_len);
    payload.push(WireState::Success as u8);
    return payload;
  }
  let mut payload = Vec::with_capacity(UPDATED_HEADER_LEN + ciphertext_len);
  payload.push(WireState::Updated as u8);
  payload.extend_from_slice(&token.to_le_bytes());
  payload.extend_from_slice(&meta.key);
  payload.extend_from_slice(&meta.iv);
  payload.extend_from_slice(&meta.tag);
  payload
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn updated_header_layout() {
    let meta = Meta {
      key: [0xaa; KEY_LEN],
      iv: [0xbb; IV_LEN],
      tag: [0xcc; TAG_LEN],
    };
    let payload = header(false, 0x0102_0304_0506_0708, &meta, 0);
    assert_eq!(payload.len(), UPDATED_HEADER_LEN);
    assert_eq!(payload[0], 1);
    assert_eq!(&payload[1..9], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&payload[9..41], &[0xaa; 32]);
    assert_eq!(&payload[41..53], &[0xbb; 12]);
    assert_eq!(&payload[53..69], &[0xcc; 16]);
    assert_eq!(header(true, 1, &meta, 0), vec![0]);
    assert_eq!(bare(WireState::InvalidProof), vec![5]);
  }
}
