//! Image ids: `KEY` or `DIR:KEY`.
//!
//! Every path the store builds starts from an [`ImageId`], and the only ways to get one are
//! [`ImageId::parse`] and [`ImageId::generate`]. Both admit nothing but `a-z 0-9 _ -` in each
//! part, so no id can name `..`, a separator, an absolute path or a NUL byte.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::error::{quote, Error, ErrorKind, Result};

/// Longest `DIR` part accepted, in characters.
pub const MAX_DIR_LEN: usize = 100;
/// Longest `KEY` part accepted, in characters. Generated keys have 16.
pub const MAX_KEY_LEN: usize = 64;

const RANDOM_KEY_CHARS: usize = 8;
const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A parsed, validated image id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageId {
  dir: Option<String>,
  key: String,
  text: String,
}

impl ImageId {
  /// Parses a caller's id. Anything but `KEY` or `DIR:KEY` of the allowed characters and lengths
  /// is an [`ErrorKind::InvalidId`] error.
  pub fn parse(text: &str) -> Result<Self> {
    let invalid = |why: &str| {
      Error::new(
        ErrorKind::InvalidId,
        format!(
          "Invalid image id {}: {why}; expected KEY or DIR:KEY, where DIR has 1 to {MAX_DIR_LEN} \
           and KEY 1 to {MAX_KEY_LEN} characters of a-z 0-9 _ -",
          quote(text)
        ),
      )
    };

    let (dir, key) = match text.split_once(':') {
      Some((dir, key)) => (Some(dir), key),
      None => (None, text),
    };
    if let Some(dir) = dir {
      check_part(dir, MAX_DIR_LEN).map_err(|why| invalid(&format!("its DIR {why}")))?;
    }
    check_part(key, MAX_KEY_LEN).map_err(|why| invalid(&format!("its KEY {why}")))?;

    Ok(ImageId {
      dir: dir.map(str::to_owned),
      key: key.to_owned(),
      text: text.to_owned(),
    })
  }

  /// Makes a new id: the time in milliseconds in base 36 and eight random base-36 characters,
  /// prefixed by the cleaned `dir` when one is given. An empty `dir` is none, as in 3.x.
  pub fn generate(dir: Option<&str>) -> Result<Self> {
    let dir = dir.filter(|d| !d.is_empty()).map(clean_dir).transpose()?;

    let mut key = to_base36(now_ms());
    let mut rng = rand::rng();
    key.extend((0..RANDOM_KEY_CHARS).map(|_| BASE36[rng.random_range(0..36)] as char));

    let text = match &dir {
      Some(dir) => format!("{dir}:{key}"),
      None => key.clone(),
    };
    Ok(ImageId { dir, key, text })
  }

  pub fn dir(&self) -> Option<&str> {
    self.dir.as_deref()
  }

  pub fn key(&self) -> &str {
    &self.key
  }

  pub fn as_str(&self) -> &str {
    &self.text
  }
}

impl std::fmt::Display for ImageId {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(&self.text)
  }
}

/// Cleans a `dir` argument as pixstore 3.x does: trimmed, lowercased, and stripped of every
/// character outside `a-z 0-9 _ -`. Unlike 3.x, nothing usable left is an error rather than an
/// id with an empty prefix.
pub fn clean_dir(raw: &str) -> Result<String> {
  let cleaned: String = raw
    .trim()
    .to_lowercase()
    .chars()
    .filter(|&c| is_id_char(c))
    .collect();

  if cleaned.is_empty() {
    return Err(Error::new(
      ErrorKind::InvalidArgument,
      format!(
        "Invalid dir {}: nothing is left after keeping only a-z 0-9 _ -; pass a name such as \
         \"avatars\", or no dir",
        quote(raw)
      ),
    ));
  }
  if cleaned.len() > MAX_DIR_LEN {
    return Err(Error::new(
      ErrorKind::InvalidArgument,
      format!(
        "Invalid dir {}: {} characters after cleaning, at most {MAX_DIR_LEN} allowed",
        quote(raw),
        cleaned.len()
      ),
    ));
  }
  Ok(cleaned)
}

fn check_part(part: &str, max_len: usize) -> std::result::Result<(), String> {
  if part.is_empty() {
    return Err("is empty".into());
  }
  if part.len() > max_len {
    return Err(format!("is {} bytes long", part.len()));
  }
  match part.chars().find(|&c| !is_id_char(c)) {
    Some(c) => Err(format!("holds the character {c:?}")),
    None => Ok(()),
  }
}

fn is_id_char(c: char) -> bool {
  matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')
}

pub(crate) fn now_ms() -> u64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_millis() as u64)
    .unwrap_or(0)
}

fn to_base36(mut n: u64) -> String {
  let mut digits = Vec::new();
  loop {
    digits.push(BASE36[(n % 36) as usize]);
    n /= 36;
    if n == 0 {
      break;
    }
  }
  digits.reverse();
  String::from_utf8(digits).expect("base-36 digits are ASCII")
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parses_plain_and_prefixed_ids() {
    let plain = ImageId::parse("mabc123xyz").unwrap();
    assert_eq!((plain.dir(), plain.key()), (None, "mabc123xyz"));

    let prefixed = ImageId::parse("user_avatars-2:k0").unwrap();
    assert_eq!(
      (prefixed.dir(), prefixed.key()),
      (Some("user_avatars-2"), "k0")
    );
    assert_eq!(prefixed.as_str(), "user_avatars-2:k0");
  }

  #[test]
  fn rejects_every_path_attack() {
    let long = "a".repeat(MAX_KEY_LEN + 1);
    for bad in [
      "",
      ":",
      "a:",
      ":a",
      "..",
      "../etc/passwd",
      "a:../../b",
      "/etc/passwd",
      "a/b",
      "a\\b",
      "a\0b",
      "a:b:c",
      "A",
      "ключ",
      "a b",
      ".hidden",
      long.as_str(),
    ] {
      let err = ImageId::parse(bad).unwrap_err();
      assert_eq!(err.kind(), ErrorKind::InvalidId, "{bad:?}");
    }
  }

  #[test]
  fn generated_ids_have_time_and_random_parts() {
    let id = ImageId::generate(Some("  My Photos! ")).unwrap();
    assert_eq!(id.dir(), Some("myphotos"));
    assert_eq!(id.key().len(), to_base36(now_ms()).len() + RANDOM_KEY_CHARS);
    assert_eq!(ImageId::parse(id.as_str()).unwrap(), id);
  }

  #[test]
  fn dir_with_nothing_usable_is_an_error() {
    assert_eq!(ImageId::generate(Some("")).unwrap().dir(), None);
    for bad in ["   ", "../..", "/", "ÄÖÜ"] {
      assert_eq!(
        clean_dir(bad).unwrap_err().kind(),
        ErrorKind::InvalidArgument,
        "{bad:?}"
      );
    }
    assert_eq!(clean_dir("../../etc").unwrap(), "etc");
  }

  #[test]
  fn base36_matches_javascript() {
    // (1700000000000).toString(36) in JavaScript.
    assert_eq!(to_base36(1_700_000_000_000), "loyw3v28");
    assert_eq!(to_base36(0), "0");
  }
}
