//! Master keys: an optional key that wraps every image key before it reaches SQLite, so that a
//! copy of the database and the image root reveals no image without it.
//!
//! A wrapped record's `meta` holds `wrappedKey` (AES-256-GCM of the image key under a key derived
//! from the master key, bound to the image id) and `masterKey`, the master key's fingerprint,
//! beside the plain IV and tag. The store remembers its master key's fingerprint in
//! `pixstore_meta`, so the wrong key is refused at init rather than used.
//!
//! A rotation from key A to key B is recorded before any record changes: its target's
//! fingerprint, B wrapped under A and A wrapped under B. Records are then re-wrapped in batches,
//! each its own transaction. Whatever moment a crash picks, every record is wrapped under A or
//! B, and either key opens the store, finds the other, and reads every image.

use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroize;

use super::error::{Error, ErrorKind, Result};

pub const MASTER_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// What the keys of the other end of a rotation are bound to, in place of an image id.
const ROTATION_SLOT: &str = "pixstore master key rotation";

/// A master key, with the fingerprint that names it in the database.
pub struct MasterKey {
  wrapping: [u8; 32],
  raw: [u8; MASTER_KEY_LEN],
  fingerprint: String,
}

// Key material never reaches a log through `{:?}`.
impl std::fmt::Debug for MasterKey {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "MasterKey({})", self.fingerprint)
  }
}

// The key's bytes do not outlive it in this process's memory (copies the caller made, in a
// Buffer, a string or the environment, are the caller's).
impl Drop for MasterKey {
  fn drop(&mut self) {
    self.wrapping.zeroize();
    self.raw.zeroize();
  }
}

impl MasterKey {
  /// A master key from its 32 bytes. `source` names where they came from, for the error.
  pub fn from_bytes(bytes: &[u8], source: &str, kind: ErrorKind) -> Result<Self> {
    let mut raw: [u8; MASTER_KEY_LEN] = bytes.try_into().map_err(|_| {
      Error::new(
        kind,
        format!(
          "Invalid {source}: expected {MASTER_KEY_LEN} bytes (a Buffer, or a string of their \
           base64), got {} bytes",
          bytes.len()
        ),
      )
    })?;
    let derive = |label: &[u8]| -> [u8; 32] {
      let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&raw).expect("HMAC takes any key length");
      mac.update(label);
      mac.finalize().into_bytes().into()
    };
    let fingerprint = derive(b"pixstore master key fingerprint")[..16]
      .iter()
      .map(|b| format!("{b:02x}"))
      .collect();
    let key = MasterKey {
      wrapping: derive(b"pixstore image key wrapping"),
      raw,
      fingerprint,
    };
    raw.zeroize();
    Ok(key)
  }

  /// A master key from standard base64 of its 32 bytes, as environment variables hold it.
  pub fn from_base64(text: &str, source: &str, kind: ErrorKind) -> Result<Self> {
    let mut bytes = BASE64.decode(text.trim()).map_err(|_| {
      Error::new(
        kind,
        format!(
          "Invalid {source}: expected the base64 of {MASTER_KEY_LEN} random bytes (make one with \
           `openssl rand -base64 32`)"
        ),
      )
    })?;
    let key = Self::from_bytes(&bytes, source, kind);
    bytes.zeroize();
    key
  }

  pub(crate) fn raw(&self) -> &[u8; MASTER_KEY_LEN] {
    &self.raw
  }

  /// Names the key without revealing anything of it.
  pub fn fingerprint(&self) -> &str {
    &self.fingerprint
  }

  /// `secret` encrypted under this key and bound to `slot`: base64 of nonce, ciphertext and tag.
  pub fn wrap(&self, slot: &str, secret: &[u8; 32]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = Aes256Gcm::new(&self.wrapping.into())
      .encrypt(
        Nonce::from_slice(&nonce),
        Payload {
          msg: secret,
          aad: slot.as_bytes(),
        },
      )
      .expect("AES-GCM encrypts 32 bytes");
    BASE64.encode([&nonce[..], &sealed].concat())
  }

  /// What `wrap` sealed for `slot`, or `None` when `text` was not sealed by this key for it.
  pub fn unwrap(&self, slot: &str, text: &str) -> Option<[u8; 32]> {
    let bytes = BASE64.decode(text).ok()?;
    if bytes.len() <= NONCE_LEN {
      return None;
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let opened = Aes256Gcm::new(&self.wrapping.into())
      .decrypt(
        Nonce::from_slice(nonce),
        Payload {
          msg: sealed,
          aad: slot.as_bytes(),
        },
      )
      .ok()?;
    opened.try_into().ok()
  }
}

/// What the database says about master keys: the store's key, and a rotation under way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
  /// Fingerprint of the key records are wrapped under; `None` for plain keys.
  pub current: Option<String>,
  pub rotation: Option<Rotation>,
  /// Bumped whenever the above changes, so that every process notices.
  pub epoch: i64,
}

/// A rotation under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
  /// Fingerprint of the key records are being re-wrapped under; `None` to unwrap them.
  pub target: Option<String>,
  /// The target key wrapped under the current one, when both exist.
  pub target_wrapped: Option<String>,
  /// The current key wrapped under the target, when both exist.
  pub current_wrapped: Option<String>,
}

impl KeyState {
  /// The key new records are wrapped under: the target of a rotation, else the store's own.
  pub fn write_fingerprint(&self) -> Option<&str> {
    match &self.rotation {
      Some(rotation) => rotation.target.as_deref(),
      None => self.current.as_deref(),
    }
  }
}

/// The keys a store instance knows: the one it wraps new image keys under and every one that
/// may have wrapped a record it reads.
#[derive(Debug, Default)]
pub struct Keyring {
  write: Option<Arc<MasterKey>>,
  known: Vec<Arc<MasterKey>>,
  epoch: i64,
}

impl Keyring {
  /// The keyring for `state`, from the keys already `known` (the configured key at init).
  /// Fails when a key the store's records may be wrapped under cannot be found.
  pub fn resolve(state: &KeyState, known: &[Arc<MasterKey>]) -> Result<Keyring> {
    let mut known = known.to_vec();
    // The other end of a rotation is found by unwrapping its slot with a key already known.
    if let Some(rotation) = &state.rotation {
      for wrapped in [&rotation.target_wrapped, &rotation.current_wrapped]
        .into_iter()
        .flatten()
      {
        let found = known
          .iter()
          .find_map(|key| key.unwrap(ROTATION_SLOT, wrapped));
        if let Some(raw) = found {
          let key = MasterKey::from_bytes(&raw, "the rotation's key", ErrorKind::WrongMasterKey)?;
          if !known.iter().any(|k| k.fingerprint == key.fingerprint) {
            known.push(Arc::new(key));
          }
        }
      }
    }

    let find = |fingerprint: &Option<String>| -> Result<Option<Arc<MasterKey>>> {
      let Some(fingerprint) = fingerprint else {
        return Ok(None);
      };
      match known.iter().find(|k| &k.fingerprint == fingerprint) {
        Some(key) => Ok(Some(Arc::clone(key))),
        None if known.is_empty() => Err(Error::new(
          ErrorKind::MasterKeyRequired,
          "This store's image keys are wrapped by a master key: give it as masterKey, or in the \
           PIXSTORE_MASTER_KEY environment variable",
        )),
        None => Err(Error::new(
          ErrorKind::WrongMasterKey,
          format!(
            "The master key given is not the one this store's image keys are wrapped by \
             (fingerprint {fingerprint}); nothing was read or changed"
          ),
        )),
      }
    };
    let current = find(&state.current)?;
    let write = match &state.rotation {
      Some(rotation) => find(&rotation.target)?,
      None => current,
    };
    Ok(Keyring {
      write,
      known,
      epoch: state.epoch,
    })
  }

  /// The key new image keys are wrapped under, if any.
  pub fn write_key(&self) -> Option<&Arc<MasterKey>> {
    self.write.as_ref()
  }

  pub fn epoch(&self) -> i64 {
    self.epoch
  }

  /// Every key this instance knows.
  pub fn known(&self) -> &[Arc<MasterKey>] {
    &self.known
  }

  /// The known key with `fingerprint`.
  pub fn key(&self, fingerprint: &str) -> Option<&Arc<MasterKey>> {
    self.known.iter().find(|k| k.fingerprint == fingerprint)
  }

  /// This keyring moved on to `state`, keeping every key it knew: a record read just before a
  /// rotation finished may still be wrapped under the old key.
  pub fn advance(&self, state: &KeyState) -> Result<Keyring> {
    Keyring::resolve(state, &self.known)
  }

  pub(crate) fn rotation_slot() -> &'static str {
    ROTATION_SLOT
  }
}

/// The keyring a store instance uses now, swapped whole when a rotation starts or ends.
#[derive(Debug, Default)]
pub struct SharedKeyring(RwLock<Arc<Keyring>>);

impl SharedKeyring {
  pub fn new(ring: Keyring) -> Self {
    SharedKeyring(RwLock::new(Arc::new(ring)))
  }

  pub fn get(&self) -> Arc<Keyring> {
    Arc::clone(&self.0.read().expect("keyring lock"))
  }

  pub fn set(&self, ring: Arc<Keyring>) {
    *self.0.write().expect("keyring lock") = ring;
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn key(byte: u8) -> Arc<MasterKey> {
    Arc::new(MasterKey::from_bytes(&[byte; 32], "test key", ErrorKind::InvalidConfig).unwrap())
  }

  #[test]
  fn wrap_round_trips_only_for_its_key_and_slot() {
    let (a, b) = (key(1), key(2));
    let secret = [7u8; 32];
    let wrapped = a.wrap("img-1", &secret);
    assert_eq!(a.unwrap("img-1", &wrapped), Some(secret));
    assert_eq!(a.unwrap("img-2", &wrapped), None);
    assert_eq!(b.unwrap("img-1", &wrapped), None);
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint().len(), 32);
    assert!(!format!("{a:?}").contains("0101"));
  }

  #[test]
  fn bad_lengths_and_text_are_refused() {
    let err = MasterKey::from_bytes(&[0; 31], "masterKey", ErrorKind::InvalidConfig).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.message().contains("got 31 bytes"), "{}", err.message());
    let err = MasterKey::from_base64(
      "not base64!",
      "PIXSTORE_MASTER_KEY",
      ErrorKind::InvalidConfig,
    )
    .unwrap_err();
    assert!(err.message().contains("PIXSTORE_MASTER_KEY"));
  }

  #[test]
  fn either_end_of_a_rotation_finds_the_other() {
    let (a, b) = (key(1), key(2));
    let raw = |k: &MasterKey| k.raw;
    let state = KeyState {
      current: Some(a.fingerprint().into()),
      rotation: Some(Rotation {
        target: Some(b.fingerprint().into()),
        target_wrapped: Some(a.wrap(ROTATION_SLOT, &raw(&b))),
        current_wrapped: Some(b.wrap(ROTATION_SLOT, &raw(&a))),
      }),
      epoch: 3,
    };
    for given in [&a, &b] {
      let ring = Keyring::resolve(&state, &[Arc::clone(given)]).unwrap();
      assert_eq!(ring.write_key().unwrap().fingerprint(), b.fingerprint());
      assert!(ring.key(a.fingerprint()).is_some());
      assert!(ring.key(b.fingerprint()).is_some());
    }

    let err = Keyring::resolve(&state, &[key(3)]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
    let err = Keyring::resolve(&state, &[]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MasterKeyRequired);
  }
}
