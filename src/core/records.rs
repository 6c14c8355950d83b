//! Records in SQLite: the schema, reads, and the one writer that commits every change.
//!
//! The `image_records(id, token, meta)` table is pixstore 3.x's, so 3.x stores open as they are;
//! we add a `file_version` column (NULL for files 3.x wrote), a `pixstore_meta` table for the
//! schema version and the proof secret, `pixstore_writers` (the store instances that may hold
//! files not yet named by a record) and `pixstore_trash` (files a commit replaced or deleted,
//! until they are gone from disk).
//!
//! Writes go through [`RecordWriter`]: a thread that owns the write connection and commits all
//! changes waiting in its queue in one transaction (group commit), then answers each caller.
//! Readers have connections of their own and, in WAL mode, never wait behind it.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngCore;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::crypto::Meta;
use super::error::{quote, Error, ErrorKind, Result};
use super::files::{self, FileVersion, ImageRoot};
use super::ids::{now_ms, ImageId};
use super::keys::{KeyState, Keyring, MasterKey, Rotation, SharedKeyring};
use super::proofs::{ProofKey, SECRET_LEN};

/// The schema this version writes. A store with a larger one was written by a newer version.
pub const SCHEMA_VERSION: i64 = 1;

/// Every table of a store: 3.x's, then ours.
const OUR_TABLES: [&str; 4] = [
  "image_records",
  "pixstore_meta",
  "pixstore_writers",
  "pixstore_trash",
];

/// How often an idle writer looks for a rotation another process started. A rotation lasts at
/// least a few of these, so that every live instance learns the new key while the database
/// still holds it wrapped under the old one.
pub const KEY_POLL: Duration = Duration::from_millis(250);

/// Most changes in one commit; more wait for the next.
const MAX_BATCH: usize = 512;

/// A record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
  pub id: ImageId,
  pub token: i64,
  pub meta: Meta,
  pub version: FileVersion,
}

/// Opens a connection that waits up to `busy` for another process's lock.
fn connect(path: &Path, flags: OpenFlags, busy: Duration) -> Result<Connection> {
  let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))?;
  conn.busy_timeout(busy).map_err(|e| open_error(path, &e))?;
  Ok(conn)
}

fn open_error(path: &Path, source: &rusqlite::Error) -> Error {
  let err = Error::database(&format!("open the database {}", path.display()), source);
  // A file that is not SQLite at all was never a store; one that is, and fails, is damaged.
  if err.kind() == ErrorKind::DatabaseCorrupt && !has_sqlite_header(path) {
    return Error::new(
      ErrorKind::IncompatibleStore,
      format!(
        "The database {} is not a SQLite file. It was left unchanged; point databasePath at a \
         Pixstore database or a new file",
        path.display()
      ),
    );
  }
  err
}

/// Reads the errno of a connection's last failed system call. SQLite reports every write the
/// disk refused as a plain I/O error; the errno says whether the disk was full or read-only.
struct SystemErrno(*mut rusqlite::ffi::sqlite3);

impl SystemErrno {
  fn of(conn: &Connection) -> Self {
    // SAFETY: the pointer is only read back by `explain` while `conn` lives, on its thread.
    SystemErrno(unsafe { conn.handle() })
  }

  fn explain(&self, err: Error) -> Error {
    if err.kind() != ErrorKind::Database {
      return err;
    }
    // SAFETY: `of` holds a live connection's handle; sqlite3_system_errno only reads it.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.0) };
    err.caused_by_os_error(errno)
  }
}

fn has_sqlite_header(path: &Path) -> bool {
  use std::io::Read;
  let mut header = [0u8; 16];
  std::fs::File::open(path)
    .and_then(|mut file| file.read_exact(&mut header))
    .is_ok_and(|()| &header == b"SQLite format 3\0")
}

/// Opens the database, creating or upgrading the schema, and returns the write connection, the
/// proof secret and the keyring of the `configured` master key. Refuses a database that is not a
/// Pixstore store, or a master key that does not fit it, and changes nothing in it then.
pub fn open_store(
  path: &Path,
  busy: Duration,
  configured: Option<Arc<MasterKey>>,
) -> Result<(Connection, ProofKey, Keyring)> {
  create_owner_only(path)?;
  let mut conn = connect(
    path,
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    busy,
  )?;
  // SQLite quietly opens a file it may not write as read-only, and its first read would leave a
  // read-only `-shm` beside the file that keeps failing the store after the file's mode is fixed.
  if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
    return Err(Error::new(
      ErrorKind::StorageReadOnly,
      format!(
        "Could not open the database {}: this process may read the file but not write it (check \
         its mode and owner)",
        path.display()
      ),
    ));
  }
  let handle = SystemErrno::of(&conn);
  let setup = |e: rusqlite::Error| handle.explain(open_error(path, &e));

  // Checked before anything is written, so a foreign file, or a store opened with the wrong
  // master key, is left exactly as it was.
  check_compatible(&conn, path)?;
  keyring_for(&conn, configured.as_ref())?;

  // Turning WAL on upgrades a read lock to a write lock, which SQLite never waits for (waiting
  // could deadlock): when another process opens the same new store at that instant, it fails at
  // once. So it is retried here, until the busy timeout runs out.
  let deadline = std::time::Instant::now() + busy;
  loop {
    match conn.pragma_update(None, "journal_mode", "WAL") {
      Ok(()) => break,
      Err(e)
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
          && std::time::Instant::now() < deadline =>
      {
        std::thread::sleep(Duration::from_millis(5));
      }
      Err(e) => return Err(setup(e)),
    }
  }
  conn
    .pragma_update(None, "synchronous", "FULL")
    .map_err(setup)?;
  // Freed space is zeroed, so that a key a rotation re-wrapped (or a deleted record's key) does
  // not linger in the file's free pages.
  conn
    .pragma_update(None, "secure_delete", "ON")
    .map_err(setup)?;

  let tx = conn
    .transaction_with_behavior(TransactionBehavior::Immediate)
    .map_err(setup)?;
  tx.execute_batch(
    "CREATE TABLE IF NOT EXISTS image_records(
       id TEXT PRIMARY KEY, token INTEGER NOT NULL, meta TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS pixstore_meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE IF NOT EXISTS pixstore_writers(id TEXT PRIMARY KEY, opened_ms INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS pixstore_trash(id TEXT NOT NULL, file_version TEXT);",
  )
  .map_err(setup)?;
  if !columns(&tx, "image_records")
    .map_err(setup)?
    .contains(&"file_version".to_string())
  {
    tx.execute_batch("ALTER TABLE image_records ADD COLUMN file_version TEXT")
      .map_err(setup)?;
  }
  tx.execute(
    "INSERT OR REPLACE INTO pixstore_meta(name, value) VALUES ('schema_version', ?1)",
    [SCHEMA_VERSION],
  )
  .map_err(setup)?;

  let mut secret = [0u8; SECRET_LEN];
  rand::rng().fill_bytes(&mut secret);
  tx.execute(
    "INSERT OR IGNORE INTO pixstore_meta(name, value) VALUES ('proof_secret', ?1)",
    [&secret[..]],
  )
  .map_err(setup)?;
  let stored: Vec<u8> = tx
    .query_row(
      "SELECT value FROM pixstore_meta WHERE name = 'proof_secret'",
      [],
      |row| row.get(0),
    )
    .map_err(setup)?;
  // Checked again under the write lock: another process may have opened the new store first.
  let (ring, adopted) = keyring_for(&tx, configured.as_ref())?;
  if let Some(state) = adopted {
    put_key_state(&tx, &state)?;
  }
  tx.commit().map_err(setup)?;

  let secret: [u8; SECRET_LEN] = stored.try_into().map_err(|_| {
    Error::new(
      ErrorKind::IncompatibleStore,
      format!(
        "The database {} holds a proof secret of the wrong length",
        path.display()
      ),
    )
  })?;
  Ok((conn, ProofKey::new(secret), ring))
}

/// Records that `writer` may leave files no record names yet. A sweep removes such files only for
/// writers registered in this database, so a database that does not know a writer (a new or
/// wrong `databasePath`, a restored backup) never has its files taken for orphans.
pub fn register_writer(conn: &Connection, writer: &str) -> Result<()> {
  conn
    .execute(
      "INSERT OR REPLACE INTO pixstore_writers(id, opened_ms) VALUES (?1, ?2)",
      params![writer, now_ms() as i64],
    )
    .map_err(|e| Error::database("register the writer", &e))?;
  Ok(())
}

/// The writers this database knows.
pub fn registered_writers(conn: &Connection) -> Result<HashSet<String>> {
  conn
    .prepare("SELECT id FROM pixstore_writers")
    .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
    .map_err(|e| Error::database("list the writers", &e))
}

/// Files waiting for removal: (row, id, version). Rows whose id or version cannot be read are
/// left out: no file can be named from them, so none is touched.
pub fn trash(conn: &Connection) -> Result<Vec<(i64, ImageId, FileVersion)>> {
  let rows = file_rows(
    conn,
    "SELECT rowid, id, file_version FROM pixstore_trash",
    "list the trash",
  )?;
  Ok(
    rows
      .into_iter()
      .filter_map(|(row, id, version)| Some((row, id.ok()?, version.ok()?)))
      .collect(),
  )
}

/// The id column of a row as this version reads it, or, when the id is not one this version
/// accepts, its text quoted (or its type) for a message.
type IdColumn = std::result::Result<ImageId, String>;

/// An `id` column, read without trusting its type.
fn id_column(value: ValueRef<'_>) -> IdColumn {
  match value {
    ValueRef::Text(text) => {
      let text = String::from_utf8_lossy(text);
      ImageId::parse(&text).map_err(|_| quote(&text))
    }
    other => Err(format!("a {} value", other.data_type())),
  }
}

/// Rows of (rowid, id, file version) that `sql` selects, each column as far as it can be read:
/// a damaged row is the caller's to judge, it does not fail the listing.
fn file_rows(
  conn: &Connection,
  sql: &str,
  action: &str,
) -> Result<Vec<(i64, IdColumn, Result<FileVersion>)>> {
  conn
    .prepare(sql)
    .and_then(|mut stmt| {
      stmt
        .query_map([], |row| {
          let id = id_column(row.get_ref(1)?);
          let named = id
            .as_ref()
            .map_or_else(|text| text.as_str(), ImageId::as_str);
          let version = version_column(row.get_ref(2)?, named);
          Ok((row.get(0)?, id, version))
        })?
        .collect()
    })
    .map_err(|e| Error::database(action, &e))
}

/// A `file_version` column, read without trusting its type.
fn version_column(value: ValueRef<'_>, id: &str) -> Result<FileVersion> {
  match value {
    ValueRef::Null => Ok(FileVersion::Legacy),
    ValueRef::Text(text) => {
      FileVersion::from_column(Some(String::from_utf8_lossy(text).into_owned()), id)
    }
    _ => FileVersion::from_column(Some(String::new()), id),
  }
}

/// A `token` column, read without trusting its type.
fn token_column(value: ValueRef<'_>, id: &str) -> Result<i64> {
  match value {
    ValueRef::Integer(token) => Ok(token),
    other => Err(Error::new(
      ErrorKind::Integrity,
      format!(
        "The record of image {id} has a damaged token column: a {} value, not an integer",
        other.data_type()
      ),
    )),
  }
}

/// Creates a missing database file (and its folder) readable by the owner only, since it holds
/// every image key. SQLite gives its WAL and shared-memory files the same permissions. An
/// existing file keeps its own.
fn create_owner_only(path: &Path) -> Result<()> {
  use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

  if let Some(parent) = path.parent() {
    std::fs::DirBuilder::new()
      .recursive(true)
      .mode(0o700)
      .create(parent)
      .map_err(|e| Error::storage("create the database folder", parent, &e))?;
  }
  match std::fs::OpenOptions::new()
    .write(true)
    .create_new(true)
    .mode(0o600)
    .open(path)
  {
    Ok(_) => Ok(()),
    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
    Err(e) => Err(Error::storage("create the database", path, &e)),
  }
}

fn check_compatible(conn: &Connection, path: &Path) -> Result<()> {
  let refuse = |why: String| {
    Error::new(
      ErrorKind::IncompatibleStore,
      format!(
        "The database {} is not a Pixstore store this version can open: {why}. It was left \
         unchanged; point databasePath at a Pixstore database or a new file",
        path.display()
      ),
    )
  };
  let read = |e: rusqlite::Error| open_error(path, &e);

  let mut tables: Vec<String> = conn
    .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
    .map_err(read)?;
  tables.retain(|t| !OUR_TABLES.contains(&t.as_str()));
  if !tables.is_empty() {
    return Err(refuse(format!(
      "it has other tables ({})",
      tables.join(", ")
    )));
  }

  let found = columns(conn, "image_records").map_err(read)?;
  if !found.is_empty() {
    let expected = ["id", "token", "meta", "file_version"];
    let mut unknown = found.iter().filter(|c| !expected.contains(&c.as_str()));
    if let Some(column) = unknown.next() {
      return Err(refuse(format!("image_records has a column {column:?}")));
    }
    for column in &expected[..3] {
      if !found.iter().any(|c| c == column) {
        return Err(refuse(format!("image_records has no {column} column")));
      }
    }
  }

  let version: Option<i64> = conn
    .query_row(
      "SELECT value FROM pixstore_meta WHERE name = 'schema_version'",
      [],
      |row| row.get(0),
    )
    .optional()
    .or_else(|e| match e {
      rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => Ok(None),
      e => Err(e),
    })
    .map_err(read)?;
  if let Some(version) = version.filter(|v| *v > SCHEMA_VERSION) {
    return Err(refuse(format!(
      "its schema version {version} is newer than this version's {SCHEMA_VERSION}; upgrade \
       pixstore"
    )));
  }
  Ok(())
}

fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
  conn
    .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
    .query_map([], |row| row.get(0))?
    .collect()
}

/// Reads one record, unwrapping its key with `ring`. A column this version cannot read is an
/// integrity error naming the record.
pub fn get(conn: &Connection, id: &ImageId, ring: &Keyring) -> Result<Option<StoredRecord>> {
  let read = conn
    .prepare_cached("SELECT token, meta, file_version FROM image_records WHERE id = ?1")
    .and_then(|mut stmt| {
      stmt
        .query_row([id.as_str()], |row| {
          let named = id.as_str();
          let meta = match row.get_ref(1)? {
            ValueRef::Text(text) => Meta::from_column(&String::from_utf8_lossy(text), named, ring),
            _ => Meta::from_column("", named, ring),
          };
          Ok((|| {
            Ok(StoredRecord {
              id: id.clone(),
              token: token_column(row.get_ref(0)?, named)?,
              meta: meta?,
              version: version_column(row.get_ref(2)?, named)?,
            })
          })())
        })
        .optional()
    })
    .map_err(|e| Error::database(&format!("read the record of {id}"), &e))?;
  read.transpose()
}

/// Whether `id` has a record.
pub fn exists(conn: &Connection, id: &ImageId) -> Result<bool> {
  conn
    .prepare_cached("SELECT 1 FROM image_records WHERE id = ?1")
    .and_then(|mut stmt| stmt.exists([id.as_str()]))
    .map_err(|e| Error::database(&format!("look up the record of {id}"), &e))
}

/// Every record's file, for the orphan sweep, the check and the downgrade.
#[derive(Debug, Default)]
pub struct RecordFiles {
  /// The records whose id and file version can be read, with them.
  pub named: Vec<(ImageId, FileVersion)>,
  /// The records whose id or file version cannot be read: the id (or its text), and why.
  pub unreadable: Vec<(IdColumn, Error)>,
}

impl RecordFiles {
  /// Whether some record's id cannot be read: any file may then be one it names.
  pub fn lost_an_id(&self) -> bool {
    self.unreadable.iter().any(|(id, _)| id.is_err())
  }

  /// The ids of the records whose id can be read but not their file version: such a record may
  /// name any file of its id.
  pub fn unreadable_ids(&self) -> HashSet<&ImageId> {
    self
      .unreadable
      .iter()
      .filter_map(|(id, _)| id.as_ref().ok())
      .collect()
  }

  /// The ids of every record whose id can be read, its file version or not.
  pub fn ids(&self) -> HashSet<&ImageId> {
    let mut ids = self.unreadable_ids();
    ids.extend(self.named.iter().map(|(id, _)| id));
    ids
  }
}

/// Every record's id and file version, each as far as it can be read.
pub fn all_files(conn: &Connection) -> Result<RecordFiles> {
  let rows = file_rows(
    conn,
    "SELECT rowid, id, file_version FROM image_records",
    "list the records",
  )?;
  let mut files = RecordFiles::default();
  for (row, id, version) in rows {
    match (id, version) {
      (Ok(id), Ok(version)) => files.named.push((id, version)),
      (Ok(id), Err(err)) => files.unreadable.push((Ok(id), err)),
      (Err(text), _) => {
        let err = Error::new(
          ErrorKind::Integrity,
          format!(
            "The record in row {row} of image_records has an id this version cannot read: {text}"
          ),
        );
        files.unreadable.push((Err(text), err));
      }
    }
  }
  Ok(files)
}

/// What `pixstore_meta` says about master keys.
pub fn key_state(conn: &Connection) -> Result<KeyState> {
  let read = |name: &str| -> Result<Option<String>> {
    conn
      .prepare_cached("SELECT value FROM pixstore_meta WHERE name = ?1")
      .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)).optional())
      .map_err(|e| Error::database("read the master key state", &e))
  };
  let rotation = match read("rotation_target")? {
    None => None,
    Some(target) => Some(Rotation {
      target: Some(target).filter(|t| !t.is_empty()),
      target_wrapped: read("rotation_target_wrapped")?,
      current_wrapped: read("rotation_current_wrapped")?,
    }),
  };
  Ok(KeyState {
    current: read("master_key")?,
    rotation,
    epoch: read("key_epoch")?.and_then(|e| e.parse().ok()).unwrap_or(0),
  })
}

fn put_key_state(tx: &rusqlite::Transaction, state: &KeyState) -> Result<()> {
  let put = |name: &str, value: Option<&str>| -> rusqlite::Result<()> {
    match value {
      Some(value) => tx
        .prepare_cached("INSERT OR REPLACE INTO pixstore_meta(name, value) VALUES (?1, ?2)")?
        .execute([name, value])
        .map(drop),
      None => tx
        .prepare_cached("DELETE FROM pixstore_meta WHERE name = ?1")?
        .execute([name])
        .map(drop),
    }
  };
  let rotation = state.rotation.as_ref();
  put("master_key", state.current.as_deref())?;
  put(
    "rotation_target",
    rotation.map(|r| r.target.as_deref().unwrap_or("")),
  )?;
  put(
    "rotation_target_wrapped",
    rotation.and_then(|r| r.target_wrapped.as_deref()),
  )?;
  put(
    "rotation_current_wrapped",
    rotation.and_then(|r| r.current_wrapped.as_deref()),
  )?;
  put("key_epoch", Some(&state.epoch.to_string()))?;
  Ok(())
}

/// The keyring of a store opened with `configured`, checked against what the database says,
/// and the key state to record when a new, empty store takes the configured key as its own.
/// A store whose keys are plain is never wrapped behind the caller's back (that is
/// `rotateMasterKey`'s job). Only reads, and reads a database without our tables as empty.
fn keyring_for(
  conn: &Connection,
  configured: Option<&Arc<MasterKey>>,
) -> Result<(Keyring, Option<KeyState>)> {
  let no_table = |e: &Error| e.message().contains("no such table");
  let mut state = match key_state(conn) {
    Err(e) if no_table(&e) => KeyState::default(),
    other => other?,
  };
  let mut adopted = None;
  if let (Some(key), None, None) = (configured, &state.current, &state.rotation) {
    let records: i64 =
      match conn.query_row("SELECT count(*) FROM image_records", [], |row| row.get(0)) {
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => 0,
        other => other?,
      };
    if records > 0 {
      return Err(Error::new(
        ErrorKind::WrongMasterKey,
        format!(
          "A masterKey was given, but the {records} image key(s) of this store are not wrapped \
           by one. To wrap them, open the store without masterKey and call \
           rotateMasterKey(key); nothing was changed"
        ),
      ));
    }
    state.current = Some(key.fingerprint().to_owned());
    state.epoch += 1;
    adopted = Some(state.clone());
  }

  let ring = Keyring::resolve(&state, &configured.into_iter().cloned().collect::<Vec<_>>())?;
  // Every key the records may be wrapped under must be at hand, not only the write key.
  if let Some(current) = &state.current {
    if ring.key(current).is_none() {
      return Err(Error::new(
        ErrorKind::MasterKeyRequired,
        "A rotation that removes this store's master key is under way: open it with the old \
         master key until rotateMasterKey(null) has finished",
      ));
    }
  }
  Ok((ring, adopted))
}

/// A record a rotation re-wraps: its id and meta column.
pub type ToRewrap = (ImageId, String);

/// Up to `limit` records after `after` (a rowid) whose keys are not wrapped under `target`
/// (`None`: whose keys are wrapped at all): (rowid, then the id and meta column, or why they
/// cannot be read). A damaged row is listed, not skipped: a rotation cannot end while it stands.
pub fn not_wrapped_under(
  conn: &Connection,
  target: Option<&str>,
  after: i64,
  limit: usize,
) -> Result<Vec<(i64, Result<ToRewrap>)>> {
  let (condition, needle) = wrapped_condition(target);
  let sql = format!(
    "SELECT rowid, id, meta FROM image_records WHERE rowid > ?1 AND {condition} \
     ORDER BY rowid LIMIT ?3"
  );
  conn
    .prepare_cached(&sql)
    .and_then(|mut stmt| {
      stmt
        .query_map(params![after, needle, limit as i64], |row| {
          let rowid: i64 = row.get(0)?;
          let read = match id_column(row.get_ref(1)?) {
            Err(shown) => Err(Error::new(
              ErrorKind::Integrity,
              format!(
                "The record in row {rowid} of image_records has an id this version cannot read \
                 ({shown}), so no call can reach it and its key cannot be re-wrapped: delete \
                 that row (DELETE FROM image_records WHERE rowid = {rowid}) or restore it from \
                 a backup, then call rotateMasterKey again"
              ),
            )),
            Ok(id) => match row.get_ref(2)? {
              ValueRef::Text(meta) => Ok((id, String::from_utf8_lossy(meta).into_owned())),
              _ => Err(Meta::unreadable(id.as_str(), "not JSON")),
            },
          };
          Ok((rowid, read))
        })?
        .collect()
    })
    .map_err(|e| Error::database("list the records to re-wrap", &e))
}

/// The SQL condition, with its one parameter `?2`, of a meta column not wrapped under `target`.
fn wrapped_condition(target: Option<&str>) -> (&'static str, String) {
  match target {
    Some(fingerprint) => (
      "instr(meta, ?2) = 0",
      format!(r#""masterKey":"{fingerprint}""#),
    ),
    None => ("instr(meta, ?2) > 0", r#""wrappedKey""#.to_owned()),
  }
}

/// What SQLite's quick check finds wrong with the database; empty when it is sound. A database
/// too damaged to check is one problem.
pub fn quick_check(conn: &Connection) -> Result<Vec<String>> {
  let found: rusqlite::Result<Vec<String>> = conn
    .prepare("PRAGMA quick_check")
    .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect());
  match found {
    Ok(lines) if lines == ["ok"] => Ok(Vec::new()),
    Ok(lines) => Ok(lines),
    Err(e) => {
      let err = Error::database("check the database", &e);
      if err.kind() == ErrorKind::DatabaseCorrupt {
        Ok(vec![err.message().to_owned()])
      } else {
        Err(err)
      }
    }
  }
}

/// Read connections, opened on demand and reused.
pub struct ReadPool {
  path: PathBuf,
  busy: Duration,
  idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
  pub fn new(path: &Path, busy: Duration) -> Self {
    ReadPool {
      path: path.to_path_buf(),
      busy,
      idle: Mutex::new(Vec::new()),
    }
  }

  /// Closes the idle connections, so that the writer's is the last one and SQLite folds the
  /// WAL back into the database file when it closes.
  pub fn close(&self) {
    self.idle.lock().expect("read pool lock").clear();
  }

  pub fn with<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let idle = self.idle.lock().expect("read pool lock").pop();
    let conn = match idle {
      Some(conn) => conn,
      None => connect(
        &self.path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        self.busy,
      )?,
    };
    let result = read(&conn);
    self.idle.lock().expect("read pool lock").push(conn);
    result
  }
}

/// A change to commit.
#[derive(Debug)]
pub enum Change {
  /// A new record for a new id.
  Insert {
    id: ImageId,
    meta: Meta,
    version: FileVersion,
  },
  /// New meta and file for an existing record; [`Outcome::Missing`] when there is none.
  Replace {
    id: ImageId,
    meta: Meta,
    version: FileVersion,
  },
  /// Removes a record.
  Delete { id: ImageId },
  /// Points a record at 3.x's unversioned name of its file, which holds the same bytes; the
  /// versioned file is removed after the commit. [`Outcome::Missing`] when the record no longer
  /// names `version`.
  ToLegacyName { id: ImageId, version: FileVersion },
  /// Forgets writers whose leftovers a sweep has removed.
  ForgetWriters { writers: Vec<String> },
  /// Drops trash rows whose files are gone.
  ClearTrash { rows: Vec<i64> },
  /// Starts re-wrapping every image key under `target` (`None`: storing them plain), or takes
  /// up the rotation to it that is under way.
  StartRotation { target: Option<Arc<MasterKey>> },
  /// Re-wraps these records' keys under the key new records get, each unless its meta column
  /// changed since it was read: [`Outcome::Rewrapped`].
  Rewrap { records: Vec<(ImageId, String)> },
  /// Ends the rotation under way once every key is wrapped under its target; otherwise
  /// [`Outcome::Pending`].
  FinishRotation,
}

/// What a committed change did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
  /// The record now holds this token. The file it named before, if any, is removed.
  Written { token: i64 },
  /// Whether a record existed and is now removed, with its file.
  Deleted { existed: bool },
  /// A replace found no record; nothing changed.
  Missing,
  /// Housekeeping done.
  Done,
  /// This many records got their key re-wrapped.
  Rewrapped { count: usize },
  /// Records still have their key wrapped under another master key.
  Pending,
}

struct Job {
  change: Change,
  reply: oneshot::Sender<Result<Outcome>>,
}

/// The one writer of a store instance.
pub struct RecordWriter {
  queue: Mutex<Option<mpsc::Sender<Job>>>,
  thread: Mutex<Option<JoinHandle<()>>>,
}

impl RecordWriter {
  /// Starts the writer thread of the store instance `writer`, which unregisters it when it
  /// stops. It wraps image keys with `keys`, and moves them on when a rotation starts or ends.
  pub fn start(
    conn: Connection,
    root: ImageRoot,
    writer: String,
    keys: Arc<SharedKeyring>,
  ) -> Result<Self> {
    let (queue, jobs) = mpsc::channel();
    let thread = std::thread::Builder::new()
      .name("pixstore-writer".into())
      .spawn(move || run_writer(conn, root, writer, keys, jobs))
      .map_err(|e| {
        Error::new(
          ErrorKind::Database,
          format!("Could not start the writer: {e}"),
        )
      })?;
    Ok(RecordWriter {
      queue: Mutex::new(Some(queue)),
      thread: Mutex::new(Some(thread)),
    })
  }

  /// Queues a change and waits for the commit that holds it.
  pub async fn commit(&self, change: Change) -> Result<Outcome> {
    self.enqueue(change)?.await.map_err(|_| closed())?
  }

  /// `commit` for threads outside the runtime, such as the sweep's.
  pub fn commit_blocking(&self, change: Change) -> Result<Outcome> {
    self
      .enqueue(change)?
      .blocking_recv()
      .map_err(|_| closed())?
  }

  fn enqueue(&self, change: Change) -> Result<oneshot::Receiver<Result<Outcome>>> {
    let queue = self.queue.lock().expect("writer queue lock").clone();
    let (reply, answer) = oneshot::channel();
    queue
      .ok_or_else(closed)?
      .send(Job { change, reply })
      .map_err(|_| closed())?;
    Ok(answer)
  }

  /// Commits what is queued, then stops the thread. Blocks until it has.
  pub fn shut_down(&self) {
    self.queue.lock().expect("writer queue lock").take();
    let thread = self.thread.lock().expect("writer thread lock").take();
    if let Some(thread) = thread {
      let _ = thread.join();
    }
  }
}

impl Drop for RecordWriter {
  fn drop(&mut self) {
    self.shut_down();
  }
}

fn closed() -> Error {
  Error::new(ErrorKind::NotInitialized, "The store is closed")
}

fn run_writer(
  mut conn: Connection,
  root: ImageRoot,
  writer: String,
  keys: Arc<SharedKeyring>,
  jobs: mpsc::Receiver<Job>,
) {
  // Trash rows whose files are gone, dropped in the next transaction rather than in one of
  // their own.
  let mut emptied: Vec<i64> = Vec::new();

  loop {
    let first = match jobs.recv_timeout(KEY_POLL) {
      Ok(job) => job,
      Err(mpsc::RecvTimeoutError::Timeout) => {
        // An idle instance still follows a rotation another process runs; a failure here shows
        // at the next commit, which reads the keys again.
        if let Ok(Some(ring)) = follow_keys(&conn, &keys.get()) {
          keys.set(ring);
        }
        continue;
      }
      Err(mpsc::RecvTimeoutError::Disconnected) => break,
    };
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
      match jobs.try_recv() {
        Ok(job) => batch.push(job),
        Err(_) => break,
      }
    }

    // New files' folder entries must be durable before a record names them.
    let folders: BTreeSet<PathBuf> = batch
      .iter()
      .filter_map(|job| match &job.change {
        Change::Insert { id, .. }
        | Change::Replace { id, .. }
        | Change::ToLegacyName { id, .. } => Some(root.folder(id)),
        _ => None,
      })
      .collect();
    if let Some(err) = folders.iter().find_map(|f| files::sync_folder(f).err()) {
      for job in batch {
        let _ = job.reply.send(Err(err.clone()));
      }
      continue;
    }

    match commit_batch(&mut conn, &root, &keys, &batch, &emptied) {
      Ok((outcomes, ring)) => {
        if let Some(ring) = ring {
          keys.set(ring);
        }
        emptied.clear();
        for (job, (outcome, trashed)) in batch.into_iter().zip(outcomes) {
          // A file that cannot be removed now stays in the trash for the next sweep.
          for (row, path) in trashed {
            if files::remove_if_present(&path).is_ok() {
              emptied.push(row);
            }
          }
          let _ = job.reply.send(outcome);
        }
      }
      Err(err) => {
        let err = SystemErrno::of(&conn).explain(err);
        for job in batch {
          let _ = job.reply.send(Err(err.clone()));
        }
      }
    }
  }

  // A clean stop: nothing of this writer is in flight any more.
  let _ = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
    clear_trash(&conn, &emptied)?;
    conn.execute("DELETE FROM pixstore_writers WHERE id = ?1", [&writer])?;
    conn.execute_batch("COMMIT")
  });
}

fn clear_trash(conn: &Connection, rows: &[i64]) -> rusqlite::Result<()> {
  let mut delete = conn.prepare_cached("DELETE FROM pixstore_trash WHERE rowid = ?1")?;
  for row in rows {
    delete.execute([row])?;
  }
  Ok(())
}

/// A change's outcome, and the trash rows it added with the files to remove after the commit.
type Applied = (Result<Outcome>, Vec<(i64, PathBuf)>);

/// Applies every change in one transaction. Each change's own failure (a missing record) is its
/// outcome; a SQLite failure fails the whole batch and commits nothing. Returns the keyring to use
/// from now on when the transaction moved to new master keys.
fn commit_batch(
  conn: &mut Connection,
  root: &ImageRoot,
  keys: &SharedKeyring,
  batch: &[Job],
  emptied: &[i64],
) -> Result<(Vec<Applied>, Option<Arc<Keyring>>)> {
  let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
  clear_trash(&tx, emptied)?;

  // Another process may have started or ended a rotation: keys are wrapped as the database says.
  let mut ring = keys.get();
  let mut moved = follow_keys(&tx, &ring)?;
  if let Some(next) = &moved {
    ring = Arc::clone(next);
  }

  let now = now_ms() as i64;
  let mut applied = Vec::with_capacity(batch.len());
  let trash = |id: &ImageId, version: &FileVersion| -> Result<(i64, PathBuf)> {
    tx.prepare_cached("INSERT INTO pixstore_trash(id, file_version) VALUES (?1, ?2)")?
      .execute(params![id.as_str(), version.to_column()])?;
    Ok((tx.last_insert_rowid(), root.file(id, version)))
  };

  for job in batch {
    let outcome = match &job.change {
      Change::Insert { id, meta, version } => {
        let inserted = tx
          .prepare_cached(
            "INSERT INTO image_records(id, token, meta, file_version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO NOTHING",
          )?
          .execute(params![
            id.as_str(),
            now,
            meta.to_column(id.as_str(), &ring),
            version.to_column()
          ])?;
        if inserted == 1 {
          (Ok(Outcome::Written { token: now }), Vec::new())
        } else {
          let clash = Error::new(
            ErrorKind::Storage,
            format!("A new image drew the id {id}, which is taken; save it again"),
          );
          (Err(clash), Vec::new())
        }
      }
      Change::Replace { id, meta, version } => match current(&tx, id)? {
        None => (Ok(Outcome::Missing), Vec::new()),
        // Damaged since the update read it: this update fails, the batch goes on.
        Some(Columns {
          token: Err(err), ..
        })
        | Some(Columns {
          version: Err(err), ..
        }) => (Err(err), Vec::new()),
        Some(Columns {
          token: Ok(previous_token),
          version: Ok(previous_version),
        }) => {
          // Later writes always get larger tokens, even within one millisecond.
          let token = now.max(previous_token + 1);
          tx.prepare_cached(
            "UPDATE image_records SET token = ?2, meta = ?3, file_version = ?4 WHERE id = ?1",
          )?
          .execute(params![
            id.as_str(),
            token,
            meta.to_column(id.as_str(), &ring),
            version.to_column()
          ])?;
          let replaced = trash(id, &previous_version)?;
          (Ok(Outcome::Written { token }), vec![replaced])
        }
      },
      Change::ToLegacyName { id, version } => {
        let renamed = tx
          .prepare_cached(
            "UPDATE image_records SET file_version = NULL WHERE id = ?1 AND file_version = ?2",
          )?
          .execute(params![id.as_str(), version.to_column()])?;
        match renamed {
          1 => {
            // An older trash row for the 3.x name must not remove the file now named so.
            tx.prepare_cached("DELETE FROM pixstore_trash WHERE id = ?1 AND file_version IS NULL")?
              .execute([id.as_str()])?;
            let token = current(&tx, id)?
              .and_then(|row| row.token.ok())
              .unwrap_or(0);
            (Ok(Outcome::Written { token }), vec![trash(id, version)?])
          }
          _ => (Ok(Outcome::Missing), Vec::new()),
        }
      }
      Change::Delete { id } => match current(&tx, id)? {
        None => (Ok(Outcome::Deleted { existed: false }), Vec::new()),
        Some(Columns { version, .. }) => {
          tx.prepare_cached("DELETE FROM image_records WHERE id = ?1")?
            .execute([id.as_str()])?;
          // A damaged record goes too; the file it named, which no column says now, is left as
          // an orphan for `verify --repair`. A 3.x name may stand beside a versioned file (a
          // downgrade cut short): it goes with it.
          let mut trashed = Vec::new();
          if let Ok(previous) = &version {
            trashed.push(trash(id, previous)?);
          }
          if version.as_ref().ok() != Some(&FileVersion::Legacy) {
            trashed.push(trash(id, &FileVersion::Legacy)?);
          }
          (Ok(Outcome::Deleted { existed: true }), trashed)
        }
      },
      Change::ForgetWriters { writers } => {
        for writer in writers {
          tx.prepare_cached("DELETE FROM pixstore_writers WHERE id = ?1")?
            .execute([writer])?;
        }
        (Ok(Outcome::Done), Vec::new())
      }
      Change::ClearTrash { rows } => {
        clear_trash(&tx, rows)?;
        (Ok(Outcome::Done), Vec::new())
      }
      Change::StartRotation { target } => match start_rotation(&tx, &ring, target.as_ref())? {
        Ok(Some(next)) => {
          ring = Arc::new(next);
          moved = Some(Arc::clone(&ring));
          (Ok(Outcome::Done), Vec::new())
        }
        Ok(None) => (Ok(Outcome::Done), Vec::new()),
        Err(refused) => (Err(refused), Vec::new()),
      },
      Change::Rewrap { records } => (rewrap(&tx, &ring, records), Vec::new()),
      Change::FinishRotation => {
        let mut state = key_state(&tx)?;
        let target = state.write_fingerprint().map(str::to_owned);
        if !not_wrapped_under(&tx, target.as_deref(), 0, 1)?.is_empty() {
          (Ok(Outcome::Pending), Vec::new())
        } else {
          if let Some(rotation) = state.rotation.take() {
            state.current = rotation.target;
            state.epoch += 1;
            put_key_state(&tx, &state)?;
            ring = Arc::new(ring.advance(&state)?);
            moved = Some(Arc::clone(&ring));
          }
          (Ok(Outcome::Done), Vec::new())
        }
      }
    };
    applied.push(outcome);
  }

  tx.commit()?;
  Ok((applied, moved))
}

/// The keyring `ring` moves on to when the database's key epoch differs from its own: another
/// process started or ended a rotation.
fn follow_keys(conn: &Connection, ring: &Keyring) -> Result<Option<Arc<Keyring>>> {
  let epoch: Option<String> = conn
    .prepare_cached("SELECT value FROM pixstore_meta WHERE name = 'key_epoch'")?
    .query_row([], |row| row.get(0))
    .optional()?;
  if epoch.and_then(|e| e.parse().ok()).unwrap_or(0) == ring.epoch() {
    return Ok(None);
  }
  Ok(Some(Arc::new(ring.advance(&key_state(conn)?)?)))
}

/// Records a rotation to `target` and returns the keyring that wraps under it; `None` when that
/// rotation is already under way or `target` is the store's key. A rotation to another key
/// under way is refused: it must finish first.
fn start_rotation(
  tx: &rusqlite::Transaction,
  ring: &Keyring,
  target: Option<&Arc<MasterKey>>,
) -> Result<Result<Option<Keyring>>> {
  let mut state = key_state(tx)?;
  let wanted = target.map(|key| key.fingerprint().to_owned());
  if let Some(rotation) = &state.rotation {
    if rotation.target == wanted {
      return Ok(Ok(None));
    }
    return Ok(Err(Error::new(
      ErrorKind::InvalidArgument,
      format!(
        "A rotation to another master key (fingerprint {}) is under way: call rotateMasterKey \
         with that key to finish it first",
        rotation.target.as_deref().unwrap_or("none: unwrapping")
      ),
    )));
  }
  if state.current == wanted {
    return Ok(Ok(None));
  }

  let current = state.current.as_deref().and_then(|fp| ring.key(fp));
  let slot = Keyring::rotation_slot();
  let (target_wrapped, current_wrapped) = match (current, target) {
    (Some(current), Some(target)) => (
      Some(current.wrap(slot, target.raw())),
      Some(target.wrap(slot, current.raw())),
    ),
    _ => (None, None),
  };
  state.rotation = Some(Rotation {
    target: wanted,
    target_wrapped,
    current_wrapped,
  });
  state.epoch += 1;
  put_key_state(tx, &state)?;

  let mut known = ring.known().to_vec();
  known.extend(target.cloned());
  Ok(Ok(Some(Keyring::resolve(&state, &known)?)))
}

/// Re-wraps records' keys under the keyring's write key, leaving any record whose meta column
/// changed since it was read (an update wrapped its new key already). Nothing is written when
/// one of them cannot be read.
fn rewrap(
  tx: &rusqlite::Transaction,
  ring: &Keyring,
  records: &[(ImageId, String)],
) -> Result<Outcome> {
  let mut rewrapped = Vec::with_capacity(records.len());
  for (id, old) in records {
    let meta = Meta::from_column(old, id.as_str(), ring)?;
    rewrapped.push((id, old, meta.to_column(id.as_str(), ring)));
  }
  let mut count = 0;
  for (id, old, new) in rewrapped {
    count += tx
      .prepare_cached("UPDATE image_records SET meta = ?3 WHERE id = ?1 AND meta = ?2")?
      .execute(params![id.as_str(), old, new])?;
  }
  Ok(Outcome::Rewrapped { count })
}

/// The token and file version of `id`'s record, each as far as its column can be read: a damaged
/// column fails only the change that needs it. The outer error is SQLite's, and fails the batch.
fn current(tx: &rusqlite::Transaction, id: &ImageId) -> Result<Option<Columns>> {
  let row = tx
    .prepare_cached("SELECT token, file_version FROM image_records WHERE id = ?1")?
    .query_row([id.as_str()], |row| {
      Ok(Columns {
        token: token_column(row.get_ref(0)?, id.as_str()),
        version: version_column(row.get_ref(1)?, id.as_str()),
      })
    })
    .optional()?;
  Ok(row)
}

struct Columns {
  token: Result<i64>,
  version: Result<FileVersion>,
}
