//! One error type for the whole core. Every failure carries a stable [`ErrorKind`], whose code
//! reaches JavaScript as `PixstoreError.code`, and a message that names the value involved.

use std::fmt;

/// What kind of failure happened. The codes are part of the public API: never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
  /// A call was made before `initPixstoreBackend`, or after `closePixstoreBackend`.
  NotInitialized,
  /// A configuration value breaks its rule.
  InvalidConfig,
  /// An argument has the right type but an unusable value.
  InvalidArgument,
  /// A string is not a well-formed image id.
  InvalidId,
  /// The bytes are not an image of an allowed format.
  InvalidImage,
  /// No image has this id.
  NotFound,
  /// A file given to `saveImageFromFile` or `updateImageFromFile` cannot be read.
  FileNotReadable,
  /// An encrypted file is missing or does not decrypt under its record's key.
  Integrity,
  /// The image root could not be written or read.
  Storage,
  /// SQLite failed.
  Database,
  /// The database exists but is not a store this version can open.
  IncompatibleStore,
  /// The default endpoint cannot listen on its host and port.
  EndpointUnavailable,
  /// `customEndpointHelper` was called while the default endpoint serves.
  DefaultEndpointRunning,
  /// A maintenance command needs the store to itself, and another process has it open.
  StoreInUse,
}

impl ErrorKind {
  /// The stable string code.
  pub fn code(self) -> &'static str {
    match self {
      ErrorKind::NotInitialized => "NOT_INITIALIZED",
      ErrorKind::InvalidConfig => "INVALID_CONFIG",
      ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
      ErrorKind::InvalidId => "INVALID_ID",
      ErrorKind::InvalidImage => "INVALID_IMAGE",
      ErrorKind::NotFound => "NOT_FOUND",
      ErrorKind::FileNotReadable => "FILE_NOT_READABLE",
      ErrorKind::Integrity => "INTEGRITY_ERROR",
      ErrorKind::Storage => "STORAGE_ERROR",
      ErrorKind::Database => "DATABASE_ERROR",
      ErrorKind::IncompatibleStore => "INCOMPATIBLE_STORE",
      ErrorKind::EndpointUnavailable => "ENDPOINT_UNAVAILABLE",
      ErrorKind::DefaultEndpointRunning => "DEFAULT_ENDPOINT_RUNNING",
      ErrorKind::StoreInUse => "STORE_IN_USE",
    }
  }
}

/// A failure of the store, with its kind and a message a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
  kind: ErrorKind,
  message: String,
  detail: Option<String>,
}

impl Error {
  pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
    Error {
      kind,
      message: message.into(),
      detail: None,
    }
  }

  /// Adds what exactly went wrong, where the message itself must keep a fixed wording.
  pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
    self.detail = Some(detail.into());
    self
  }

  pub fn kind(&self) -> ErrorKind {
    self.kind
  }

  pub fn message(&self) -> &str {
    &self.message
  }

  pub fn detail(&self) -> Option<&str> {
    self.detail.as_deref()
  }

  pub(crate) fn not_found(id: &str) -> Self {
    // The wording is pixstore 3.x's; callers match on it.
    Error::new(ErrorKind::NotFound, format!("Image not found: {id}"))
  }

  pub(crate) fn storage(action: &str, path: &std::path::Path, source: &std::io::Error) -> Self {
    Error::new(
      ErrorKind::Storage,
      format!("Could not {action} {}: {source}", path.display()),
    )
  }

  pub(crate) fn database(action: &str, source: &rusqlite::Error) -> Self {
    Error::new(ErrorKind::Database, format!("Could not {action}: {source}"))
  }
}

impl fmt::Display for Error {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{} ({})", self.message, self.kind.code())?;
    match &self.detail {
      Some(detail) => write!(f, ": {detail}"),
      None => Ok(()),
    }
  }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
  fn from(source: rusqlite::Error) -> Self {
    Error::database("commit the records", &source)
  }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shows a caller's string inside a message: quoted, escaped and cut to a readable length, so
/// that control characters or a megabyte-long id cannot garble a log line.
pub(crate) fn quote(value: &str) -> String {
  const SHOWN: usize = 80;
  let mut shown: String = value.chars().take(SHOWN).collect();
  if shown.len() < value.len() {
    shown.push('…');
  }
  format!("{shown:?}")
}
