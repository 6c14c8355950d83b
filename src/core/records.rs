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
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngCore;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::crypto::Meta;
use super::error::{Error, ErrorKind, Result};
use super::files::{self, FileVersion, ImageRoot};
use super::ids::{now_ms, ImageId};
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

/// How long a connection waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Opens a connection set up for the store: WAL, full sync, and a generous busy timeout.
fn connect(path: &Path, flags: OpenFlags) -> Result<Connection> {
  let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))?;
  conn
    .busy_timeout(BUSY_TIMEOUT)
    .map_err(|e| open_error(path, &e))?;
  Ok(conn)
}

fn open_error(path: &Path, source: &rusqlite::Error) -> Error {
  let kind = match source.sqlite_error_code() {
    Some(rusqlite::ErrorCode::NotADatabase) => ErrorKind::IncompatibleStore,
    _ => ErrorKind::Database,
  };
  Error::new(
    kind,
    format!("Could not open the database {}: {source}", path.display()),
  )
}

/// Opens the database, creating or upgrading the schema, and returns the write connection and
/// the proof secret. Refuses a database that is not a Pixstore store, and changes nothing in it.
pub fn open_store(path: &Path) -> Result<(Connection, ProofKey)> {
  create_owner_only(path)?;
  let mut conn = connect(
    path,
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
  )?;
  let setup = |e: rusqlite::Error| open_error(path, &e);

  // Checked before anything is written, so a foreign file is left exactly as it was.
  check_compatible(&conn, path)?;

  conn
    .pragma_update(None, "journal_mode", "WAL")
    .map_err(setup)?;
  conn
    .pragma_update(None, "synchronous", "FULL")
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
  Ok((conn, ProofKey::new(secret)))
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

/// Files waiting for removal: (row, id, version).
pub fn trash(conn: &Connection) -> Result<Vec<(i64, ImageId, FileVersion)>> {
  file_rows(
    conn,
    "SELECT rowid, id, file_version FROM pixstore_trash",
    "list the trash",
  )
}

/// Rows of (rowid, id, file version) that `sql` selects. Rows whose id or version this version
/// cannot parse are left out: their files are never touched.
fn file_rows(
  conn: &Connection,
  sql: &str,
  action: &str,
) -> Result<Vec<(i64, ImageId, FileVersion)>> {
  let rows: Vec<(i64, String, Option<String>)> = conn
    .prepare(sql)
    .and_then(|mut stmt| {
      stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect()
    })
    .map_err(|e| Error::database(action, &e))?;
  Ok(
    rows
      .into_iter()
      .filter_map(|(row, id, version)| {
        let version = FileVersion::from_column(version, &id).ok()?;
        Some((row, ImageId::parse(&id).ok()?, version))
      })
      .collect(),
  )
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

/// Reads one record.
pub fn get(conn: &Connection, id: &ImageId) -> Result<Option<StoredRecord>> {
  let row: Option<(i64, String, Option<String>)> = conn
    .prepare_cached("SELECT token, meta, file_version FROM image_records WHERE id = ?1")
    .and_then(|mut stmt| {
      stmt
        .query_row([id.as_str()], |row| {
          Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()
    })
    .map_err(|e| Error::database(&format!("read the record of {id}"), &e))?;

  row
    .map(|(token, meta, version)| {
      Ok(StoredRecord {
        id: id.clone(),
        token,
        meta: Meta::from_json(&meta, id.as_str())?,
        version: FileVersion::from_column(version, id.as_str())?,
      })
    })
    .transpose()
}

/// Every record's id and file version, for the orphan sweep and the downgrade.
pub fn all_files(conn: &Connection) -> Result<Vec<(ImageId, FileVersion)>> {
  let rows = file_rows(
    conn,
    "SELECT rowid, id, file_version FROM image_records",
    "list the records",
  )?;
  Ok(
    rows
      .into_iter()
      .map(|(_, id, version)| (id, version))
      .collect(),
  )
}

/// Read connections, opened on demand and reused.
pub struct ReadPool {
  path: PathBuf,
  idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
  pub fn new(path: &Path) -> Self {
    ReadPool {
      path: path.to_path_buf(),
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
  /// stops.
  pub fn start(conn: Connection, root: ImageRoot, writer: String) -> Result<Self> {
    let (queue, jobs) = mpsc::channel();
    let thread = std::thread::Builder::new()
      .name("pixstore-writer".into())
      .spawn(move || run_writer(conn, root, writer, jobs))
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

fn run_writer(mut conn: Connection, root: ImageRoot, writer: String, jobs: mpsc::Receiver<Job>) {
  // Trash rows whose files are gone, dropped in the next transaction rather than in one of
  // their own.
  let mut emptied: Vec<i64> = Vec::new();

  while let Ok(first) = jobs.recv() {
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

    match commit_batch(&mut conn, &root, &batch, &emptied) {
      Ok(outcomes) => {
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
/// outcome; a SQLite failure fails the whole batch and commits nothing.
fn commit_batch(
  conn: &mut Connection,
  root: &ImageRoot,
  batch: &[Job],
  emptied: &[i64],
) -> Result<Vec<Applied>> {
  let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
  clear_trash(&tx, emptied)?;
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
            meta.to_json(),
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
        Some((previous_token, previous_version)) => {
          // Later writes always get larger tokens, even within one millisecond.
          let token = now.max(previous_token + 1);
          tx.prepare_cached(
            "UPDATE image_records SET token = ?2, meta = ?3, file_version = ?4 WHERE id = ?1",
          )?
          .execute(params![
            id.as_str(),
            token,
            meta.to_json(),
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
            let token = current(&tx, id)?.map_or(0, |(token, _)| token);
            (Ok(Outcome::Written { token }), vec![trash(id, version)?])
          }
          _ => (Ok(Outcome::Missing), Vec::new()),
        }
      }
      Change::Delete { id } => match current(&tx, id)? {
        None => (Ok(Outcome::Deleted { existed: false }), Vec::new()),
        Some((_, previous_version)) => {
          tx.prepare_cached("DELETE FROM image_records WHERE id = ?1")?
            .execute([id.as_str()])?;
          // A 3.x name may stand beside a versioned file (a downgrade cut short): it goes too.
          let mut trashed = vec![trash(id, &previous_version)?];
          if previous_version != FileVersion::Legacy {
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
    };
    applied.push(outcome);
  }

  tx.commit()?;
  Ok(applied)
}

/// The token and file version of an id's record, inside a transaction.
fn current(tx: &rusqlite::Transaction, id: &ImageId) -> Result<Option<(i64, FileVersion)>> {
  let row: Option<(i64, Option<String>)> = tx
    .prepare_cached("SELECT token, file_version FROM image_records WHERE id = ?1")?
    .query_row([id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
    .optional()?;
  row
    .map(|(token, version)| Ok((token, FileVersion::from_column(version, id.as_str())?)))
    .transpose()
}
