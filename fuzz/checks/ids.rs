//! Ids and the paths they map to, on any text. The input is tried whole and line by line.
//!
//! `ImageId::parse` accepts exactly `KEY` or `DIR:KEY` of `a-z 0-9 _ -` within the length
//! limits, and its id gives back the text it was parsed from. An accepted id, a cleaned `dir` and
//! a generated id map to files strictly inside the image root: one plain component for the
//! folder, one for the file, never the control folder, and distinct ids never share a file.
//! `FileVersion::from_column` accepts only `WRITER-SEQ` versions, which stay one component.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use pixstore::core::endpoint::decode_id;
use pixstore::core::files::{FileVersion, ImageRoot, EXTENSION};
use pixstore::core::ids::{clean_dir, MAX_DIR_LEN, MAX_KEY_LEN};
use pixstore::core::{ErrorKind, ImageId};

/// Lines beyond this many are not tried one by one.
const MAX_LINES: usize = 16;
const VERSION: &str = "0123456789-0";

/// An existing folder, so that opening it as the image root creates nothing.
static ROOT: LazyLock<ImageRoot> =
  LazyLock::new(|| ImageRoot::open(&std::env::temp_dir()).expect("the temporary folder"));

pub fn check(data: &[u8]) {
  let text = String::from_utf8_lossy(data);

  // The whole text, then its lines, which give ids to tell apart, then what the endpoint makes
  // of the text as a request path.
  let decoded = check_decode(&text);
  let mut candidates = vec![&*text];
  if text.contains('\n') {
    candidates.extend(text.split('\n').take(MAX_LINES));
  }
  candidates.extend(decoded.as_deref());

  let mut owners: HashMap<PathBuf, ImageId> = HashMap::new();
  for candidate in candidates {
    let ids = check_parse(candidate)
      .into_iter()
      .chain(check_clean_dir(candidate));
    for id in ids {
      for version in versions() {
        let owner = owners
          .entry(ROOT.file(&id, &version))
          .or_insert_with(|| id.clone());
        assert_eq!(*owner, id, "{owner} and {id} share a file");
      }
    }
    check_version(candidate);
  }
}

/// The endpoint's decoding of a request path: text without `%` is itself, and whatever it
/// decodes to comes back from its own percent-encoding.
fn check_decode(text: &str) -> Option<String> {
  let decoded = decode_id(text);
  if !text.contains('%') {
    assert_eq!(decoded.as_deref(), Some(text), "{text:?} has no escape");
  }
  if let Some(decoded) = &decoded {
    let encoded = utf8_percent_encode(decoded, NON_ALPHANUMERIC).to_string();
    assert_eq!(decode_id(&encoded).as_ref(), Some(decoded), "{encoded:?}");
  }
  decoded
}

fn check_parse(text: &str) -> Option<ImageId> {
  let parsed = ImageId::parse(text);
  assert_eq!(
    parsed.is_ok(),
    is_well_formed(text),
    "{text:?} gave {parsed:?}"
  );

  let id = match parsed {
    Ok(id) => id,
    Err(err) => {
      assert_eq!(err.kind(), ErrorKind::InvalidId, "{err:?}");
      return None;
    }
  };
  assert_eq!(id.as_str(), text);
  assert_eq!(id.to_string(), text);
  let joined = match id.dir() {
    Some(dir) => format!("{dir}:{}", id.key()),
    None => id.key().to_owned(),
  };
  assert_eq!(joined, text);
  assert_eq!(ImageId::parse(id.as_str()).as_ref(), Ok(&id));
  check_paths(&id);
  Some(id)
}

/// `KEY` or `DIR:KEY`, each part non-empty, within its length and of `a-z 0-9 _ -` only.
fn is_well_formed(text: &str) -> bool {
  let part_ok = |part: &str, max_len: usize| {
    !part.is_empty() && part.len() <= max_len && part.chars().all(is_id_char)
  };
  match text.split_once(':') {
    Some((dir, key)) => part_ok(dir, MAX_DIR_LEN) && part_ok(key, MAX_KEY_LEN),
    None => part_ok(text, MAX_KEY_LEN),
  }
}

fn is_id_char(c: char) -> bool {
  matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')
}

/// A cleaned `dir` is usable as the `DIR` of an id, and so is a generated id with it.
fn check_clean_dir(raw: &str) -> Vec<ImageId> {
  let kept = raw
    .trim()
    .to_lowercase()
    .chars()
    .filter(|&c| is_id_char(c))
    .count();
  let cleaned = clean_dir(raw);
  assert_eq!(
    cleaned.is_ok(),
    (1..=MAX_DIR_LEN).contains(&kept),
    "{raw:?} gave {cleaned:?}"
  );

  let generated = ImageId::generate(Some(raw));
  let cleaned = match cleaned {
    Ok(cleaned) => cleaned,
    Err(err) => {
      assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
      match generated {
        Ok(id) => assert!(raw.is_empty() && id.dir().is_none(), "{raw:?} gave {id}"),
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}"),
      }
      return Vec::new();
    }
  };
  assert_eq!(clean_dir(&cleaned).as_ref(), Ok(&cleaned), "not idempotent");
  let with_key = ImageId::parse(&format!("{cleaned}:k"))
    .unwrap_or_else(|e| panic!("{raw:?} cleaned to {cleaned:?}, not a DIR: {e:?}"));
  check_paths(&with_key);

  let generated = generated.unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
  assert_eq!(generated.dir(), Some(cleaned.as_str()));
  assert_eq!(ImageId::parse(generated.as_str()).as_ref(), Ok(&generated));
  check_paths(&generated);
  vec![with_key, generated]
}

fn check_version(text: &str) {
  let version = FileVersion::from_column(Some(text.to_owned()), "fuzz");
  assert_eq!(
    version.is_ok(),
    is_writer_seq(text),
    "{text:?} gave {version:?}"
  );
  match version {
    Ok(version) => {
      assert_eq!(version.to_column(), Some(text));
      check_file(&ImageId::parse("cats:k1").unwrap(), &version);
    }
    Err(err) => assert_eq!(err.kind(), ErrorKind::Integrity, "{err:?}"),
  }
}

/// `WRITER-SEQ`: ten base-36 characters, then one to sixteen hexadecimal digits.
fn is_writer_seq(text: &str) -> bool {
  text.split_once('-').is_some_and(|(writer, seq)| {
    writer.len() == 10
      && writer
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
      && (1..=16).contains(&seq.len())
      && seq.bytes().all(|b| b.is_ascii_hexdigit())
  })
}

fn versions() -> [FileVersion; 2] {
  [
    FileVersion::Legacy,
    FileVersion::Versioned(VERSION.to_owned()),
  ]
}

fn check_paths(id: &ImageId) {
  let root = ROOT.path();
  let folder = ROOT.folder(id);
  let below: Vec<Component> = folder
    .strip_prefix(root)
    .expect("under the root")
    .components()
    .collect();
  match id.dir() {
    Some(dir) => assert_eq!(below, [Component::Normal(dir.as_ref())], "{id}"),
    None => assert!(below.is_empty(), "{id}"),
  }
  assert_ne!(
    folder,
    root.join(".pixstore"),
    "{id} maps into the control folder"
  );

  for version in versions() {
    check_file(id, &version);
  }
}

fn check_file(id: &ImageId, version: &FileVersion) {
  let file = ROOT.file(id, version);
  assert_eq!(file.parent(), Some(ROOT.folder(id).as_path()), "{id}");
  assert_plainly_below(ROOT.path(), &file, 1 + usize::from(id.dir().is_some()));

  let name = match version.to_column() {
    None => format!("{}.{EXTENSION}", id.key()),
    Some(version) => format!("{}.{version}.{EXTENSION}", id.key()),
  };
  assert_eq!(file.file_name(), Some(name.as_ref()), "{id}");
}

/// `path` is `depth` plain components below `root`: no `..`, `.`, root or prefix among them,
/// and no NUL byte anywhere.
fn assert_plainly_below(root: &Path, path: &Path, depth: usize) {
  let below = path
    .strip_prefix(root)
    .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), root.display()));
  let components: Vec<Component> = below.components().collect();
  assert_eq!(components.len(), depth, "{}", path.display());
  assert!(
    components.iter().all(|c| matches!(c, Component::Normal(_))),
    "{}",
    path.display()
  );
  assert!(
    !path.as_os_str().as_bytes().contains(&0),
    "{}",
    path.display()
  );
}
