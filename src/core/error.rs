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
  /// The disk (or the process's file size limit) has no room for the write.
  StorageFull,
  /// The image root or the database cannot be written: a read-only filesystem or permissions.
  StorageReadOnly,
  /// SQLite failed.
  Database,
  /// Another process held the database locked for longer than the busy timeout.
  DatabaseBusy,
  /// The database file is damaged.
  DatabaseCorrupt,
  /// The database exists but is not a store this version can open.
  IncompatibleStore,
  /// The default endpoint cannot listen on its host and port.
  EndpointUnavailable,
  /// `customEndpointHelper` was called while the default endpoint serves.
  DefaultEndpointRunning,
  /// A maintenance command needs the store to itself, and another process has it open.
  StoreInUse,
  /// The store's image keys are wrapped by a master key, and none was given.
  MasterKeyRequired,
  /// The master key given is not the one the store's keys are wrapped by.
  WrongMasterKey,
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
      ErrorKind::StorageFull => "STORAGE_FULL",
      ErrorKind::StorageReadOnly => "STORAGE_READ_ONLY",
      ErrorKind::Database => "DATABASE_ERROR",
      ErrorKind::DatabaseBusy => "DATABASE_BUSY",
      ErrorKind::DatabaseCorrupt => "DATABASE_CORRUPT",
      ErrorKind::IncompatibleStore => "INCOMPATIBLE_STORE",
      ErrorKind::EndpointUnavailable => "ENDPOINT_UNAVAILABLE",
      ErrorKind::DefaultEndpointRunning => "DEFAULT_ENDPOINT_RUNNING",
      ErrorKind::StoreInUse => "STORE_IN_USE",
      ErrorKind::MasterKeyRequired => "MASTER_KEY_REQUIRED",
      ErrorKind::WrongMasterKey => "WRONG_MASTER_KEY",
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
    // A file the store cannot read for its permissions is no sign of a read-only root.
    let kind = match storage_kind(source) {
      ErrorKind::StorageReadOnly if action.starts_with("read") => ErrorKind::Storage,
      kind => kind,
    };
    Error::new(
      kind,
      format!("Could not {action} {}: {source}", path.display()),
    )
  }

  /// This database error, with the kind the operating system's `errno` gives it when that is a
  /// full disk or a read-only one.
  pub(crate) fn caused_by_os_error(self, errno: i32) -> Self {
    if errno == 0 {
      return self;
    }
    let source = std::io::Error::from_raw_os_error(errno);
    match storage_kind(&source) {
      ErrorKind::Storage => self,
      kind => Error {
        kind,
        message: format!("{} ({source})", self.message),
        detail: self.detail,
      },
    }
  }

  pub(crate) fn database(action: &str, source: &rusqlite::Error) -> Self {
    let (kind, advice) = match source.sqlite_error_code() {
      Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => (
        ErrorKind::DatabaseBusy,
        ": another process held the database locked for longer than databaseBusyTimeout",
      ),
      Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => (
        ErrorKind::DatabaseCorrupt,
        ": the database file is damaged; restore it from a backup",
      ),
      Some(rusqlite::ErrorCode::DiskFull) => (ErrorKind::StorageFull, ": the disk is full"),
      // CANTOPEN says nothing of why: the errno behind it decides (see `caused_by_os_error`).
      Some(rusqlite::ErrorCode::ReadOnly) => (
        ErrorKind::StorageReadOnly,
        ": the database or its folder cannot be written",
      ),
      _ => (ErrorKind::Database, ""),
    };
    Error::new(kind, format!("Could not {action}: {source}{advice}"))
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

/// The kind of a failed file operation: a full disk and a read-only root get codes of their own,
/// since the caller's remedy differs.
fn storage_kind(source: &std::io::Error) -> ErrorKind {
  use std::io::ErrorKind as Io;
  match source.kind() {
    Io::StorageFull | Io::FileTooLarge | Io::QuotaExceeded => ErrorKind::StorageFull,
    Io::ReadOnlyFilesystem | Io::PermissionDenied => ErrorKind::StorageReadOnly,
    _ => ErrorKind::Storage,
  }
}

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
