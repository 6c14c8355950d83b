//! AES-256-GCM encryption of one image under its own key.
//!
//! An encrypted file holds only the ciphertext of the format byte followed by the image; the key,
//! IV and tag live in the record's `meta`, as pixstore 3.x lays them out, so 3.x browsers decrypt
//! our files and we decrypt theirs.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

use super::error::{Error, ErrorKind, Result};
use super::keys::Keyring;

pub const KEY_LEN: usize = 32;
pub const IV_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// What decrypts one file: the `meta` of a record.
#[derive(Clone, PartialEq, Eq)]
pub struct Meta {
  pub key: [u8; KEY_LEN],
  pub iv: [u8; IV_LEN],
  pub tag: [u8; TAG_LEN],
}

// Key material never reaches a log through `{:?}`.
impl std::fmt::Debug for Meta {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Meta { .. }")
  }
}

impl Meta {
  /// The `meta` column's JSON text without a master key: `{"key":…,"iv":…,"tag":…}`, standard
  /// base64 with padding, in 3.x's key order.
  pub fn to_json(&self) -> String {
    // Base64 needs no JSON escaping.
    format!(
      r#"{{"key":"{}","iv":"{}","tag":"{}"}}"#,
      self.key_base64(),
      self.iv_base64(),
      self.tag_base64()
    )
  }

  /// The `meta` column for the record `id`: the image key wrapped under the keyring's write key
  /// when it has one, plain JSON otherwise.
  pub fn to_column(&self, id: &str, ring: &Keyring) -> String {
    match ring.write_key() {
      None => self.to_json(),
      Some(master) => format!(
        r#"{{"wrappedKey":"{}","masterKey":"{}","iv":"{}","tag":"{}"}}"#,
        master.wrap(id, &self.key),
        master.fingerprint(),
        self.iv_base64(),
        self.tag_base64()
      ),
    }
  }

  /// The error of a `meta` column of the record `id` that cannot be read, and why.
  pub fn unreadable(id: &str, why: &str) -> Error {
    Error::new(
      ErrorKind::Integrity,
      format!("The record of image {id} has an unreadable meta column: {why}"),
    )
  }

  /// Reads the `meta` column of the record `id`, unwrapping its key with the keyring.
  pub fn from_column(text: &str, id: &str, ring: &Keyring) -> Result<Self> {
    let corrupt = |why: &str| Self::unreadable(id, why);
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt("not JSON"))?;
    let text_field = |name: &str| -> Result<&str> {
      value
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| corrupt(&format!("no {name} string")))
    };
    let field = |name: &str, len: usize| -> Result<Vec<u8>> {
      let bytes = BASE64
        .decode(text_field(name)?)
        .map_err(|_| corrupt(&format!("{name} is not base64")))?;
      if bytes.len() != len {
        return Err(corrupt(&format!("{name} is not {len} bytes")));
      }
      Ok(bytes)
    };

    let key: [u8; KEY_LEN] = if value.get("wrappedKey").is_some() {
      let fingerprint = text_field("masterKey")?;
      let master = ring.key(fingerprint).ok_or_else(|| {
        // A process given no key at all is told to give one; one with other keys, which it has.
        let (kind, given) = if ring.known().is_empty() {
          (
            ErrorKind::MasterKeyRequired,
            "no master key was given to this process",
          )
        } else {
          (
            ErrorKind::WrongMasterKey,
            "this process was not given that key",
          )
        };
        Error::new(
          kind,
          format!(
            "The key of image {id} is wrapped by the master key of fingerprint {}, and {given}: \
             restart it with the store's current key",
            super::error::quote(fingerprint)
          ),
        )
      })?;
      master
        .unwrap(id, text_field("wrappedKey")?)
        .ok_or_else(|| corrupt("its wrapped key does not open under the master key"))?
    } else {
      field("key", KEY_LEN)?.try_into().expect("length checked")
    };
    Ok(Meta {
      key,
      iv: field("iv", IV_LEN)?.try_into().expect("length checked"),
      tag: field("tag", TAG_LEN)?.try_into().expect("length checked"),
    })
  }

  /// Reads a plain `meta` column, as 3.x wrote it. `id` only names the record in the error.
  pub fn from_json(text: &str, id: &str) -> Result<Self> {
    Self::from_column(text, id, &Keyring::default())
  }

  pub fn key_base64(&self) -> String {
    BASE64.encode(self.key)
  }

  pub fn iv_base64(&self) -> String {
    BASE64.encode(self.iv)
  }

  pub fn tag_base64(&self) -> String {
    BASE64.encode(self.tag)
  }
}

/// Encrypts the format byte and `image` under a fresh key and IV.
pub fn seal(format_byte: u8, image: &[u8]) -> (Vec<u8>, Meta) {
  let mut buffer = Vec::with_capacity(image.len() + 1);
  buffer.push(format_byte);
  buffer.extend_from_slice(image);
  let meta = seal_in_place(&mut buffer);
  (buffer, meta)
}

/// Encrypts `plaintext` (the format byte and the image) in place under a fresh key and IV, for a
/// caller that has laid it out where the file is written from.
pub fn seal_in_place(plaintext: &mut [u8]) -> Meta {
  let mut key = [0u8; KEY_LEN];
  let mut iv = [0u8; IV_LEN];
  let mut rng = rand::rng();
  rng.fill_bytes(&mut key);
  rng.fill_bytes(&mut iv);

  let cipher = Aes256Gcm::new(&key.into());
  let tag = cipher
    .encrypt_in_place_detached(Nonce::from_slice(&iv), b"", plaintext)
    .expect("AES-GCM encrypts any buffer shorter than 64 GiB");

  Meta {
    key,
    iv,
    tag: tag.into(),
  }
}

/// Decrypts a file's ciphertext in place and splits off the format byte. `None` when the tag
/// check fails: a wrong key, a changed byte or a cut-off file.
pub fn open(mut ciphertext: Vec<u8>, meta: &Meta) -> Option<(u8, Vec<u8>)> {
  let cipher = Aes256Gcm::new(&meta.key.into());
  cipher
    .decrypt_in_place_detached(
      Nonce::from_slice(&meta.iv),
      b"",
      &mut ciphertext,
      Tag::from_slice(&meta.tag),
    )
    .ok()?;

  if ciphertext.is_empty() {
    return None;
  }
  let format_byte = ciphertext.remove(0);
  Some((format_byte, ciphertext))
}

/// Whether `ciphertext` is intact under `meta`: its tag checks out. The bytes are left as they
/// were (decrypted, then encrypted again under the same key and IV, which gives them back), so
/// a payload can be checked where it lies, without a second copy.
pub fn is_intact(ciphertext: &mut [u8], meta: &Meta) -> bool {
  let cipher = Aes256Gcm::new(&meta.key.into());
  let nonce = Nonce::from_slice(&meta.iv);
  if cipher
    .decrypt_in_place_detached(nonce, b"", ciphertext, Tag::from_slice(&meta.tag))
    .is_err()
  {
    return false;
  }
  cipher
    .encrypt_in_place_detached(nonce, b"", ciphertext)
    .expect("AES-GCM encrypts what it decrypted");
  !ciphertext.is_empty()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn seal_then_open_round_trips() {
    let image = b"\x89PNG not really".to_vec();
    let (ciphertext, meta) = seal(1, &image);
    assert_eq!(ciphertext.len(), image.len() + 1);
    assert_eq!(open(ciphertext, &meta), Some((1, image)));
  }

  #[test]
  fn an_intact_file_is_left_as_it_was() {
    let (ciphertext, meta) = seal(2, b"webp bytes");
    let mut checked = ciphertext.clone();
    assert!(is_intact(&mut checked, &meta));
    assert_eq!(checked, ciphertext);
    checked[0] ^= 1;
    assert!(!is_intact(&mut checked, &meta));
    checked[0] ^= 1;
    assert_eq!(checked, ciphertext);
  }

  #[test]
  fn any_changed_byte_fails() {
    let (mut ciphertext, meta) = seal(3, b"jpeg bytes");
    ciphertext[4] ^= 1;
    assert_eq!(open(ciphertext, &meta), None);
  }

  #[test]
  fn a_wrapped_key_read_without_its_master_key_names_what_is_missing() {
    use super::super::keys::{KeyState, MasterKey};
    use std::sync::Arc;

    let key = |byte: u8| {
      Arc::new(MasterKey::from_bytes(&[byte; 32], "test key", ErrorKind::InvalidConfig).unwrap())
    };
    let ring_of = |master: &Arc<MasterKey>| {
      let state = KeyState {
        current: Some(master.fingerprint().into()),
        ..KeyState::default()
      };
      Keyring::resolve(&state, &[Arc::clone(master)]).unwrap()
    };
    let (a, b) = (key(1), key(2));
    let (_, meta) = seal(1, b"x");
    let column = meta.to_column("img", &ring_of(&a));

    assert_eq!(
      Meta::from_column(&column, "img", &ring_of(&a)).unwrap(),
      meta
    );
    let none = Meta::from_column(&column, "img", &Keyring::default()).unwrap_err();
    assert_eq!(none.kind(), ErrorKind::MasterKeyRequired);
    assert!(
      none.message().contains("no master key was given"),
      "{}",
      none.message()
    );
    let other = Meta::from_column(&column, "img", &ring_of(&b)).unwrap_err();
    assert_eq!(other.kind(), ErrorKind::WrongMasterKey);
    assert!(
      other.message().contains(a.fingerprint()),
      "{}",
      other.message()
    );
  }

  #[test]
  fn meta_json_round_trips_and_rejects_bad_lengths() {
    let (_, meta) = seal(1, b"x");
    let json = meta.to_json();
    assert_eq!(Meta::from_json(&json, "a").unwrap(), meta);
    assert!(json.starts_with("{\"key\":\""));

    let short = r#"{"key":"AAAA","iv":"AAAAAAAAAAAAAAAA","tag":"AAAAAAAAAAAAAAAAAAAAAA=="}"#;
    let err = Meta::from_json(short, "a").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity);
  }
}
