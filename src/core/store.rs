//! The store: every public operation, in terms of files, records and keys.
//!
//! A write never touches the file a record names. It writes a new file under a new version,
//! makes it durable, and only then commits the record that names it; the file the record named
//! before is removed after that commit. So at every instant each record names a complete file
//! that decrypts under its meta, whatever moment a crash picks. See `files` for the sweep that
//! removes files no record names.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Semaphore;

use super::config::{Config, SecretInput};
use super::crypto::{self, Meta};
use super::endpoint::Endpoint;
use super::error::{quote, Error, ErrorKind, Result};
use super::files::{self, FileVersion, ImageRoot, Staged, Writer, WriterLiveness, WriterState};
use super::ids::{now_ms, ImageId};
use super::keys::{MasterKey, SharedKeyring};
use super::proofs::ProofKey;
use super::records::{self, Change, Outcome, ReadPool, RecordWriter, StoredRecord};
use super::wire::{self, WireState};

/// What callers get back for an image: its id, token, meta and a proof to fetch it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
  pub id: String,
  pub token: i64,
  /// Standard base64 of the 32-byte key, 12-byte IV and 16-byte tag.
  pub key: String,
  pub iv: String,
  pub tag: String,
  pub stateless_proof: String,
}

/// What a sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
  /// Orphans of dead writers, removed.
  pub removed: usize,
  /// Files of live writers that no record names yet.
  pub left_to_live_writers: usize,
  /// Files no record names whose writer closed cleanly, and 3.x files without a record: not
  /// left by a crash, so never removed automatically.
  pub left_unowned: usize,
}

/// An open store. Cheap to share: wrap it in an [`Arc`].
pub struct Store {
  config: Config,
  root: ImageRoot,
  writer: Writer,
  records: RecordWriter,
  reads: ReadPool,
  proof_key: ProofKey,
  keys: Arc<SharedKeyring>,
  /// One rotation at a time in this process; the database refuses a second target. Claimed
  /// when the call is made, so that of two calls the later one is refused.
  rotating: Arc<tokio::sync::Mutex<()>>,
  gate: Gate,
  /// Bounds how many images are being encrypted and written at once, so that a storm of large
  /// saves holds a few ciphertexts in memory rather than one per call.
  file_work: Semaphore,
  endpoint: Mutex<Option<Endpoint>>,
  /// Files the endpoint found intact, as they were then.
  intact: Mutex<HashMap<PathBuf, FileStamp>>,
  /// Set once the start-up sweep is over, for a check to wait on (it would otherwise list as
  /// orphans the files the sweep is removing).
  swept: (Mutex<bool>, Condvar),
}

/// What became of a request's payload.
enum Built<G> {
  Payload(Vec<u8>, G),
  NoRecord,
  /// The caller's `reserve` declined the file's size.
  Declined,
}

/// Files the endpoint remembers as intact; past this many it starts over.
const INTACT_REMEMBERED: usize = 65_536;

/// What changes when a file's bytes do: its inode, size, and modification and change times (the
/// change time cannot be set back by a caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
  inode: u64,
  len: u64,
  modified: (i64, i64),
  changed: (i64, i64),
}

impl FileStamp {
  fn of(metadata: &std::fs::Metadata) -> Self {
    use std::os::unix::fs::MetadataExt;
    FileStamp {
      inode: metadata.ino(),
      len: metadata.len(),
      modified: (metadata.mtime(), metadata.mtime_nsec()),
      changed: (metadata.ctime(), metadata.ctime_nsec()),
    }
  }
}

impl Store {
  /// Opens (or creates) the store the configuration names and starts removing orphans left by
  /// dead writers in the background. Runs on the calling thread: `initPixstoreBackend` is
  /// synchronous by contract.
  pub fn open(config: Config) -> Result<Arc<Store>> {
    let root = ImageRoot::open(&config.image_root)?;
    let busy = config.database_busy_timeout;
    let (conn, proof_key, ring) =
      records::open_store(&config.database_path, busy, config.master_key.clone())?;
    // Opened with the target of a rotation a crash cut short: finish it in the background.
    let resume = records::key_state(&conn)?
      .rotation
      .filter(|rotation| {
        rotation.target.is_some()
          && rotation.target.as_deref() == config.master_key.as_ref().map(|k| k.fingerprint())
      })
      .and(config.master_key.clone());
    let keys = Arc::new(SharedKeyring::new(ring));
    let writer = Writer::register(&root)?;
    records::register_writer(&conn, writer.id())?;
    let records = RecordWriter::start(
      conn,
      root.clone(),
      writer.id().to_owned(),
      Arc::clone(&keys),
    )?;
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());

    let store = Arc::new(Store {
      reads: ReadPool::new(&config.database_path, busy),
      config,
      root,
      writer,
      records,
      proof_key,
      keys,
      rotating: Arc::new(tokio::sync::Mutex::new(())),
      gate: Gate::default(),
      file_work: Semaphore::new((parallel * 2).max(4)),
      endpoint: Mutex::new(None),
      intact: Mutex::new(HashMap::new()),
      swept: (Mutex::new(false), Condvar::new()),
    });

    if store.config.default_endpoint_enabled {
      let config = &store.config;
      let endpoint = Endpoint::start(
        Arc::downgrade(&store),
        store.proof_key.store_identity(),
        &config.default_endpoint_listen_host,
        config.default_endpoint_listen_port,
        &config.default_endpoint_route,
        &config.access_control_allow_origin,
      )?;
      *store.endpoint.lock().expect("endpoint lock") = Some(endpoint);
    }

    // The sweep counts as a call in progress, so `close` waits for it.
    store.gate.hold()?;
    let sweeper = Arc::clone(&store);
    let started = std::thread::Builder::new()
      .name("pixstore-sweep".into())
      .spawn(move || {
        // Whatever becomes of the sweep, even a panic, a check waiting for it and a close
        // waiting for this call go on.
        struct Over<'a>(&'a Store);
        impl Drop for Over<'_> {
          fn drop(&mut self) {
            self.0.sweep_over();
            self.0.gate.release();
          }
        }
        let _over = Over(&sweeper);
        // Nobody waits for these results: orphans left now are removed by the next sweep, and
        // a rotation cut short again resumes at the next start.
        let _ = sweeper.sweep();
        sweeper.sweep_over();
        if let Some(target) = resume {
          if let Ok(claim) = sweeper.claim_rotation() {
            let _ = sweeper.rotate(Some(target), claim);
          }
        }
      });
    if let Err(e) = started {
      store.gate.release();
      return Err(Error::new(
        ErrorKind::Storage,
        format!("Could not start the sweep: {e}"),
      ));
    }
    Ok(store)
  }

  /// Starts a call: from now until the [`Call`] is dropped, `close` waits for it. Take it when
  /// the caller makes the call, so that a close or re-init that follows cannot overtake it.
  pub fn call(self: &Arc<Self>) -> Result<Call> {
    self.gate.hold()?;
    Ok(Call {
      store: Arc::clone(self),
    })
  }

  /// The record of `id`, or `None`. Synchronous: reads on the calling thread.
  pub fn record(&self, id: &str) -> Result<Option<ImageRecord>> {
    let _pass = self.gate.enter()?;
    let id = ImageId::parse(id)?;
    let stored = self.stored(&id)?;
    Ok(stored.map(|stored| self.to_record(&stored.id, stored.token, &stored.meta)))
  }

  /// The stored record of `id`, its key unwrapped. A key wrapped under a master key this
  /// instance has not seen yet means another process started a rotation: the keyring catches
  /// up with the database and the record is read again.
  fn stored(&self, id: &ImageId) -> Result<Option<StoredRecord>> {
    let ring = self.keys.get();
    match self.reads.with(|conn| records::get(conn, id, &ring)) {
      Err(err) if err.kind() == ErrorKind::WrongMasterKey => {
        let state = self.reads.with(records::key_state)?;
        if state.epoch == ring.epoch() {
          return Err(err);
        }
        let ring = Arc::new(ring.advance(&state)?);
        self.keys.set(Arc::clone(&ring));
        self.reads.with(|conn| records::get(conn, id, &ring))
      }
      other => other,
    }
  }

  /// Whether a record, or a 3.x file, exists for `id`. Synchronous: one indexed lookup on the
  /// calling thread, and a stat when there is no record; cheaper than a trip to a worker.
  pub fn exists(&self, id: &str) -> Result<bool> {
    let _pass = self.gate.enter()?;
    let id = ImageId::parse(id)?;
    self.exists_now(&id)
  }

  fn exists_now(&self, id: &ImageId) -> Result<bool> {
    if self.reads.with(|conn| records::exists(conn, id))? {
      return Ok(true);
    }
    Ok(self.root.file(id, &FileVersion::Legacy).is_file())
  }

  /// Checks a proof for `id` against the current and the previous window.
  pub fn verify_proof(&self, id: &str, proof: &str) -> bool {
    self
      .proof_key
      .verify(id, proof, self.config.proof_window, now_ms())
  }

  /// The wire payload for a request. The checks run in 3.x's order: id present, proof present,
  /// proof valid, record exists, token equal. Blocks on file and database reads.
  pub fn payload(&self, id: &str, client_token: Option<i64>, proof: Option<&str>) -> Vec<u8> {
    let built = self.payload_within(id, client_token, proof, |_| Some(()));
    built
      .expect("a payload that reserves nothing is never declined")
      .0
  }

  /// `payload`, calling `reserve` with the size of an image's file before reading it, so that
  /// a server can wait for memory; what `reserve` returns comes back with the payload. When
  /// `reserve` returns `None`, nothing is read and the result is `None`: the server may build
  /// the payload elsewhere.
  pub fn payload_within<G>(
    &self,
    id: &str,
    client_token: Option<i64>,
    proof: Option<&str>,
    reserve: impl FnOnce(usize) -> Option<G>,
  ) -> Option<(Vec<u8>, Option<G>)> {
    let bare = |state| Some((wire::bare(state), None));
    if id.is_empty() {
      return bare(WireState::MissingId);
    }
    let Some(proof) = proof.filter(|p| !p.is_empty()) else {
      return bare(WireState::MissingProof);
    };
    if !self.verify_proof(id, proof) {
      return bare(WireState::InvalidProof);
    }
    let Ok(id) = ImageId::parse(id) else {
      return bare(WireState::NotFound);
    };
    let Ok(_pass) = self.gate.enter() else {
      return bare(WireState::InternalError);
    };
    match self.payload_of(&id, client_token, reserve) {
      Ok(Built::Payload(payload, guard)) => Some((payload, Some(guard))),
      Ok(Built::NoRecord) => bare(WireState::NotFound),
      Ok(Built::Declined) => None,
      Err(_) => bare(WireState::InternalError),
    }
  }

  fn payload_of<G>(
    &self,
    id: &ImageId,
    client_token: Option<i64>,
    reserve: impl FnOnce(usize) -> Option<G>,
  ) -> Result<Built<G>> {
    use std::io::Read;

    let Some((stored, mut file, path)) = self.open_current(id)? else {
      return Ok(Built::NoRecord);
    };
    let metadata = file
      .metadata()
      .map_err(|e| Error::storage("read the encrypted file", &path, &e))?;
    let len = metadata.len() as usize;
    let Some(guard) = reserve(wire::UPDATED_HEADER_LEN + len) else {
      return Ok(Built::Declined);
    };
    let current = client_token == Some(stored.token);
    let mut payload = wire::header(current, stored.token as u64, &stored.meta, len);
    let header_len = payload.len();
    file
      .read_to_end(&mut payload)
      .map_err(|e| Error::storage("read the encrypted file", &path, &e))?;
    // A changed or cut-off file is never served: the browser would only fail to decrypt it.
    // Files are never rewritten, so one checked once is checked again only if its inode, size
    // or times changed.
    let stamp = FileStamp::of(&metadata);
    if self.intact.lock().expect("intact lock").get(&path) != Some(&stamp) {
      if !crypto::is_intact(&mut payload[header_len..], &stored.meta) {
        return Err(self.damaged(&stored, &path));
      }
      let mut intact = self.intact.lock().expect("intact lock");
      if intact.len() >= INTACT_REMEMBERED {
        intact.clear();
      }
      intact.insert(path, stamp);
    }
    Ok(Built::Payload(payload, guard))
  }

  /// The record of `id` with its file, opened; `None` when there is no record. A concurrent
  /// update or delete may remove the file between reading the record and opening the file; the
  /// record is then read again. Three rounds are plenty in practice.
  fn open_current(&self, id: &ImageId) -> Result<Option<(StoredRecord, std::fs::File, PathBuf)>> {
    match self.find_current(id)? {
      Current::Gone => Ok(None),
      Current::Open(stored, file, path) => Ok(Some((stored, file, path))),
      Current::Missing(path) => Err(Error::new(
        ErrorKind::Integrity,
        format!(
          "The encrypted file of image {id} is missing: {}",
          path.display()
        ),
      )),
    }
  }

  fn find_current(&self, id: &ImageId) -> Result<Current> {
    let mut last_missing = None;
    for _ in 0..3 {
      let Some(stored) = self.stored(id)? else {
        return Ok(Current::Gone);
      };
      let path = self.root.file(id, &stored.version);
      match std::fs::File::open(&path) {
        Ok(file) => return Ok(Current::Open(stored, file, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => last_missing = Some(path),
        Err(e) => return Err(Error::storage("read the encrypted file", &path, &e)),
      }
    }
    Ok(Current::Missing(last_missing.expect("the loop ran")))
  }

  /// Where the default endpoint listens, while it runs.
  pub fn endpoint_address(&self) -> Option<std::net::SocketAddr> {
    self
      .endpoint
      .lock()
      .expect("endpoint lock")
      .as_ref()
      .map(Endpoint::address)
  }

  /// Stops the default endpoint once its responses in flight are sent. Blocks.
  pub fn stop_endpoint(&self) {
    let endpoint = self.endpoint.lock().expect("endpoint lock").take();
    if let Some(mut endpoint) = endpoint {
      endpoint.stop();
    }
  }

  /// Removes every encrypted file that no record names and whose writer died, and the lock files
  /// of dead writers. Files of live writers (this instance included) are left: their records may
  /// be about to commit. So are files of writers that closed cleanly, and 3.x files.
  pub fn sweep(&self) -> Result<SweepReport> {
    let found = self.root.list_files()?;
    let registered = self.reads.with(records::registered_writers)?;

    // Writers are asked before the records are read: a writer found dead then can commit
    // nothing later, so a file of its that no record names below is surely an orphan. (Asked
    // the other way round, a writer could commit and die in between, and lose its image.)
    let mut liveness = WriterLiveness::new(&self.root);
    let mut writers = registered.clone();
    writers.extend(
      found
        .iter()
        .filter_map(|file| file.writer().map(str::to_owned)),
    );
    let dead: HashSet<String> = writers
      .into_iter()
      .filter(|writer| liveness.state(writer) == WriterState::Dead)
      .collect();

    let (files, trash) = self
      .reads
      .with(|conn| Ok((records::all_files(conn)?, records::trash(conn)?)))?;
    let named: HashSet<(ImageId, FileVersion)> = files.named.iter().cloned().collect();
    // A record whose file version cannot be read may name any file of its id; one whose id
    // cannot be read, any file at all.
    let unreadable = files.unreadable_ids();
    let lost_an_id = files.lost_an_id();

    let mut report = SweepReport::default();
    for file in found {
      if named.contains(&(file.id.clone(), file.version.clone())) {
        continue;
      }
      if lost_an_id || unreadable.contains(&file.id) {
        report.left_unowned += 1;
        continue;
      }
      match file.writer() {
        // Only a writer this database knows can have left files it does not name: any other
        // belongs to another database, or to this one before a restore.
        Some(writer) if dead.contains(writer) && registered.contains(writer) => {
          if files::remove_if_present(&file.path)? {
            report.removed += 1;
          }
        }
        Some(writer) if liveness.state(writer) == WriterState::Live => {
          report.left_to_live_writers += 1
        }
        _ => report.left_unowned += 1,
      }
    }

    // Files a commit replaced or deleted, whose removal a crash or an error cut short.
    let mut emptied = Vec::new();
    for (row, id, version) in trash {
      let path = self.root.file(&id, &version);
      if named.contains(&(id, version)) {
        emptied.push(row);
      } else if let Ok(removed) = files::remove_if_present(&path) {
        report.removed += usize::from(removed);
        emptied.push(row);
      }
    }
    if !emptied.is_empty() {
      self
        .records
        .commit_blocking(Change::ClearTrash { rows: emptied })?;
    }

    let forgotten: Vec<String> = dead.intersection(&registered).cloned().collect();
    if !forgotten.is_empty() {
      self.records.commit_blocking(Change::ForgetWriters {
        writers: forgotten.clone(),
      })?;
    }
    liveness.remove_dead_locks(&forgotten);
    Ok(report)
  }

  /// Waits for every call in progress, commits what is queued and closes the database. Later
  /// calls fail with [`ErrorKind::NotInitialized`]. Blocks: call it off the JavaScript thread.
  pub fn close(&self) {
    self.stop_endpoint();
    self.gate.close_and_wait();
    self.reads.close();
    self.records.shut_down();
    self.writer.release();
  }

  /// Writes a new file for `id` and commits the record naming it; `replace` for updates.
  async fn write(
    self: &Arc<Self>,
    id: ImageId,
    image: impl AsRef<[u8]> + Send + 'static,
    replace: bool,
  ) -> Result<ImageRecord> {
    // An update of a missing id fails before any file is written. The record is read, not just
    // its index entry, so that a damaged page fails here, naming the id. One lookup on the
    // calling task: cheaper than a trip to a blocking thread. (The commit checks again.)
    if replace && self.stored(&id)?.is_none() {
      return Err(Error::not_found(id.as_str()));
    }

    let version = self.writer.next_version();
    let permit = self
      .file_work
      .acquire()
      .await
      .expect("the semaphore is never closed");
    let (file_id, file_version) = (id.clone(), version.clone());
    let (meta, path) = self
      .blocking(move |store| {
        let format_byte = store.config.image_formats.format_byte(image.as_ref())?;
        let mut file = Staged::concat(&[&[format_byte], image.as_ref()]);
        drop(image);
        let meta = crypto::seal_in_place(file.as_mut());
        let path = store.root.write_new(&file_id, &file_version, &file)?;
        Ok((meta, path))
      })
      .await?;
    drop(permit);

    let change = if replace {
      Change::Replace {
        id: id.clone(),
        meta: meta.clone(),
        version,
      }
    } else {
      Change::Insert {
        id: id.clone(),
        meta: meta.clone(),
        version,
      }
    };
    let outcome = self.records.commit(change).await;

    match outcome {
      Ok(Outcome::Written { token }) => Ok(self.to_record(&id, token, &meta)),
      other => {
        // Nothing names the new file: remove it now rather than leave it to a sweep.
        self
          .blocking(move |_| files::remove_if_present(&path))
          .await?;
        match other {
          Ok(Outcome::Missing) => Err(Error::not_found(id.as_str())),
          Ok(outcome) => unreachable!("a write has no {outcome:?} outcome"),
          Err(err) => Err(err),
        }
      }
    }
  }

  fn read_now(&self, id: &ImageId) -> Result<Option<Vec<u8>>> {
    let Some((stored, file, path)) = self.open_current(id)? else {
      return Ok(None);
    };
    self.read_open(&stored, file, &path).map(Some)
  }

  fn read_open(
    &self,
    stored: &StoredRecord,
    mut file: std::fs::File,
    path: &Path,
  ) -> Result<Vec<u8>> {
    use std::io::Read;

    let mut ciphertext = Vec::new();
    file
      .read_to_end(&mut ciphertext)
      .map_err(|e| Error::storage("read the encrypted file", path, &e))?;
    self.decrypt(stored, path, ciphertext)
  }

  /// The right to rotate. A second rotation in this process is refused, not queued: its caller
  /// would deploy a key the first one then replaces.
  fn claim_rotation(&self) -> Result<RotationClaim> {
    Arc::clone(&self.rotating).try_lock_owned().map_err(|_| {
      Error::new(
        ErrorKind::InvalidArgument,
        "A master key rotation is already running in this process: wait for it to finish",
      )
    })
  }

  /// Re-wraps every image key under `target` (`None`: stores them plain) in batches, each its
  /// own commit, while the store serves. Blocks. When the store closes midway it stops; the
  /// rotation is recorded in the database and resumes at the next start with the new key.
  fn rotate(&self, target: Option<Arc<MasterKey>>, _claim: RotationClaim) -> Result<usize> {
    let started = std::time::Instant::now();
    self.records.commit_blocking(Change::StartRotation {
      target: target.clone(),
    })?;
    let fingerprint = target.as_ref().map(|key| key.fingerprint().to_owned());

    let mut rewrapped = 0;
    loop {
      let mut after = 0;
      loop {
        if self.gate.is_closed() {
          return Err(Error::new(
            ErrorKind::NotInitialized,
            "Pixstore was closed during the master key rotation; it resumes when the store is \
             opened with the new key (or, for a rotation to no key, when rotateMasterKey(null) \
             is called again)",
          ));
        }
        let rows = self.reads.with(|conn| {
          records::not_wrapped_under(conn, fingerprint.as_deref(), after, ROTATION_BATCH)
        })?;
        let Some(&(last, _)) = rows.last() else {
          break;
        };
        after = last;
        // A record whose id or meta cannot be read stops the rotation, naming it: its key
        // cannot be re-wrapped, and the old key must stay until it is deleted or restored.
        let records = rows
          .into_iter()
          .map(|(_, read)| read)
          .collect::<Result<Vec<_>>>()?;
        if let Outcome::Rewrapped { count } =
          self.records.commit_blocking(Change::Rewrap { records })?
        {
          rewrapped += count;
        }
      }
      // Other processes on the store learn the new key from the rotation's record, so it stays
      // long enough for each to poll it.
      let settle = (records::KEY_POLL * 8).saturating_sub(started.elapsed());
      std::thread::sleep(settle);
      // Records written while the pass ran may still name the old key: another pass takes them.
      if self.records.commit_blocking(Change::FinishRotation)? == Outcome::Done {
        return Ok(rewrapped);
      }
    }
  }

  /// Lets the checks waiting for the start-up sweep go on.
  fn sweep_over(&self) {
    let (done, ended) = &self.swept;
    *done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
    ended.notify_all();
  }

  /// Checks every record's file and the database, and lists files no record names; with
  /// `repair`, removes those. Files of live writers are left out: their records may be about
  /// to commit. It starts once the start-up sweep is over. `progress` hears (records checked,
  /// records in all). Blocks.
  fn verify(&self, repair: bool, progress: &dyn Fn(usize, usize)) -> Result<Verification> {
    let (done, ended) = &self.swept;
    drop(
      ended
        .wait_while(done.lock().unwrap_or_else(|p| p.into_inner()), |done| {
          !*done
        })
        .unwrap_or_else(|p| p.into_inner()),
    );
    let mut report = Verification {
      database: self.reads.with(records::quick_check)?,
      ..Verification::default()
    };
    // Files are listed before records, so that a file committed in between counts as named.
    let found = self.root.list_files()?;
    let listed = match self.reads.with(records::all_files) {
      Ok(listed) => listed,
      // Without the records, no file can be checked, and none is an orphan for sure.
      Err(err) if err.kind() == ErrorKind::DatabaseCorrupt => {
        if report.database.is_empty() {
          report.database.push(err.message().to_owned());
        }
        return Ok(report);
      }
      Err(err) => return Err(err),
    };

    // What concerns one record or its file is reported with it, and the check goes on: a
    // damaged meta column, a key it cannot unwrap, a damaged page of the records' index, a file
    // that does not decrypt or cannot be read.
    let of_one_record = |err: &Error| {
      matches!(
        err.kind(),
        ErrorKind::Integrity
          | ErrorKind::WrongMasterKey
          | ErrorKind::MasterKeyRequired
          | ErrorKind::DatabaseCorrupt
          | ErrorKind::Storage
          | ErrorKind::StorageReadOnly
      )
    };
    for (id, err) in &listed.unreadable {
      match id {
        Ok(id) => report
          .damaged
          .push((id.as_str().to_owned(), err.message().to_owned())),
        Err(_) => report.database.push(err.message().to_owned()),
      }
    }
    let total = listed.named.len();
    for (done, (id, _)) in listed.named.iter().enumerate() {
      let read = match self.find_current(id) {
        // Deleted since the listing.
        Ok(Current::Gone) => Ok(()),
        Ok(Current::Missing(path)) => {
          report.missing.push((id.as_str().to_owned(), path));
          Ok(())
        }
        Ok(Current::Open(stored, file, path)) => self
          .read_open(&stored, file, &path)
          .map(|_| report.intact += 1),
        Err(err) => Err(err),
      };
      match read {
        Err(err) if of_one_record(&err) => report
          .damaged
          .push((id.as_str().to_owned(), err.message().to_owned())),
        other => other?,
      }
      if done % 64 == 63 || done + 1 == total {
        progress(done + 1, total);
      }
    }
    report.records = report.intact + report.missing.len() + report.damaged.len();

    // Liveness is settled before the records are read again, as in the sweep: a writer that
    // commits a file and closes in between then counts as live, not its file as an orphan.
    let mut liveness = WriterLiveness::new(&self.root);
    let live: HashSet<&str> = found
      .iter()
      .filter_map(|file| file.writer())
      .filter(|writer| liveness.state(writer) == WriterState::Live)
      .collect();
    let now = self.reads.with(records::all_files)?;
    let named: HashSet<(ImageId, FileVersion)> = now.named.iter().cloned().collect();
    let recorded = now.ids();
    let unreadable = now.unreadable_ids();
    for file in &found {
      let kept = named.contains(&(file.id.clone(), file.version.clone()))
        || file.writer().is_some_and(|writer| live.contains(writer))
        // A record whose file version cannot be read may name any file of its id.
        || unreadable.contains(&file.id)
        // A 3.x name beside a recorded image is a downgrade's (under way, or cut short), and its
        // only copy once the downgrade commits; it is no orphan.
        || (file.version == FileVersion::Legacy && recorded.contains(&file.id));
      if kept {
        continue;
      }
      // Removed since the listing (an update or delete of the live app): no orphan either.
      if !file.path.exists() {
        continue;
      }
      // A damaged database may have lost the records that name these: keep them then.
      if repair && report.database.is_empty() && !now.lost_an_id() {
        match files::remove_if_present(&file.path) {
          Ok(true) => report.removed += 1,
          Ok(false) => continue,
          Err(err) => report
            .unremoved
            .push((file.path.clone(), err.message().to_owned())),
        }
      }
      report.orphans.push(file.path.clone());
    }
    Ok(report)
  }

  fn decrypt(&self, stored: &StoredRecord, path: &Path, ciphertext: Vec<u8>) -> Result<Vec<u8>> {
    let (_format_byte, image) =
      crypto::open(ciphertext, &stored.meta).ok_or_else(|| self.damaged(stored, path))?;
    Ok(image)
  }

  fn damaged(&self, stored: &StoredRecord, path: &Path) -> Error {
    Error::new(
      ErrorKind::Integrity,
      format!(
        "The encrypted file of image {} does not decrypt under its record's key: {} was changed \
         or cut short",
        stored.id,
        path.display()
      ),
    )
  }

  fn to_record(&self, id: &ImageId, token: i64, meta: &Meta) -> ImageRecord {
    ImageRecord {
      id: id.as_str().to_owned(),
      token,
      key: meta.key_base64(),
      iv: meta.iv_base64(),
      tag: meta.tag_base64(),
      stateless_proof: self
        .proof_key
        .issue(id.as_str(), self.config.proof_window, now_ms()),
    }
  }

  /// Runs file, crypto or database work on a blocking thread.
  async fn blocking<T: Send + 'static>(
    self: &Arc<Self>,
    work: impl FnOnce(&Store) -> Result<T> + Send + 'static,
  ) -> Result<T> {
    let store = Arc::clone(self);
    tokio::task::spawn_blocking(move || {
      yield_to_javascript();
      work(&store)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Storage, format!("A store task failed: {e}")))?
  }
}

/// One call in progress on a store, taken with [`Store::call`]. The store's operations are its
/// methods; dropping it ends the call.
pub struct Call {
  store: Arc<Store>,
}

impl Drop for Call {
  fn drop(&mut self) {
    self.store.gate.release();
  }
}

impl Call {
  /// Stops the default endpoint, once its responses in flight are sent.
  pub async fn stop_endpoint(&self) -> Result<()> {
    self
      .store
      .blocking(|store| {
        store.stop_endpoint();
        Ok(())
      })
      .await
  }

  /// Saves a new image, optionally under `dir`.
  pub async fn save(
    &self,
    image: impl AsRef<[u8]> + Send + 'static,
    dir: Option<String>,
  ) -> Result<ImageRecord> {
    let id = ImageId::generate(dir.as_deref())?;
    self.store.write(id, image, false).await
  }

  /// Saves the image in the file at `path`.
  pub async fn save_from_file(&self, path: String, dir: Option<String>) -> Result<ImageRecord> {
    let id = ImageId::generate(dir.as_deref())?;
    let image = self.store.blocking(move |_| read_image_file(&path)).await?;
    self.store.write(id, image, false).await
  }

  /// Replaces the image of an existing id: new key, IV, file and a larger token.
  pub async fn update(
    &self,
    id: &str,
    image: impl AsRef<[u8]> + Send + 'static,
  ) -> Result<ImageRecord> {
    let id = ImageId::parse(id)?;
    self.store.write(id, image, true).await
  }

  /// Replaces the image of an existing id with the one in the file at `path`.
  pub async fn update_from_file(&self, id: &str, path: String) -> Result<ImageRecord> {
    let id = ImageId::parse(id)?;
    let image = self.store.blocking(move |_| read_image_file(&path)).await?;
    self.store.write(id, image, true).await
  }

  /// Removes an image. `true` when a record or a 3.x file existed and is now gone.
  pub async fn delete(&self, id: &str) -> Result<bool> {
    let id = ImageId::parse(id)?;
    let Outcome::Deleted { existed } = self
      .store
      .records
      .commit(Change::Delete { id: id.clone() })
      .await?
    else {
      unreachable!("a delete has a Deleted outcome");
    };
    if existed {
      return Ok(true);
    }
    // A 3.x file without a record counts, as it did in 3.x. (Sweeps never remove those.)
    self
      .store
      .blocking(move |store| files::remove_if_present(&store.root.file(&id, &FileVersion::Legacy)))
      .await
  }

  /// Whether a record, or a 3.x file, exists for `id`.
  pub async fn exists(&self, id: &str) -> Result<bool> {
    let id = ImageId::parse(id)?;
    self
      .store
      .blocking(move |store| store.exists_now(&id))
      .await
  }

  /// The original bytes of an image, or `None` when there is no such image.
  pub async fn read(&self, id: &str) -> Result<Option<Vec<u8>>> {
    let id = ImageId::parse(id)?;
    self.store.blocking(move |store| store.read_now(&id)).await
  }

  /// The wire payload for a request, for `customEndpointHelper`, which cannot be used while the
  /// default endpoint serves (both would answer for the store, as in 3.x).
  pub async fn custom_payload(
    &self,
    id: String,
    client_token: Option<i64>,
    proof: Option<String>,
  ) -> Result<Vec<u8>> {
    if self.store.endpoint_address().is_some() {
      return Err(Error::new(
        ErrorKind::DefaultEndpointRunning,
        "customEndpointHelper cannot be used while the default endpoint is running: set \
         defaultEndpointEnabled: false, or call stopDefaultEndpoint() first",
      ));
    }
    self
      .store
      .blocking(move |store| Ok(store.payload(&id, client_token, proof.as_deref())))
      .await
  }

  /// Re-wraps every image key under `new_key` (`None`: stores them plain) while the store
  /// serves. Returns how many keys were re-wrapped.
  ///
  /// The rotation is claimed now, as the call is made, and the work runs when the returned
  /// future is polled: of two calls made one after the other, the second is refused.
  pub fn rotate_master_key(
    self,
    new_key: Option<SecretInput>,
  ) -> impl Future<Output = Result<usize>> + Send + 'static {
    let claim = self.store.claim_rotation();
    async move {
      let claim = claim?;
      let target = new_key
        .map(|key| key.to_key("newKey", ErrorKind::InvalidArgument))
        .transpose()?
        .map(Arc::new);
      self
        .store
        .blocking(move |store| store.rotate(target, claim))
        .await
    }
  }

  /// Checks the store; see [`Verification`]. `progress` hears (records checked, records in all).
  pub async fn verify(
    &self,
    repair: bool,
    progress: impl Fn(usize, usize) + Send + 'static,
  ) -> Result<Verification> {
    self
      .store
      .blocking(move |store| store.verify(repair, &progress))
      .await
  }

  /// Gives every file this version wrote 3.x's name (`KEY.pixstore-image`) and clears its
  /// version, so that pixstore 3.x can open the store again. For each file: a second name is
  /// linked (or a copy made) and made durable, the record is committed, and only then the
  /// versioned name goes, so a crash leaves every record naming a complete file and the command
  /// can run again. Refuses while another process uses the store. A record whose file is
  /// missing is skipped and reported, and the others go on.
  pub async fn downgrade_to_legacy_names(&self) -> Result<Downgrade> {
    let state = self
      .store
      .blocking(|store| store.reads.with(records::key_state))
      .await?;
    if state.current.is_some() || state.rotation.is_some() {
      return Err(Error::new(
        ErrorKind::IncompatibleStore,
        "pixstore 3.x cannot read image keys wrapped by a master key: call \
         rotateMasterKey(null) first (and let it finish), then run the downgrade again",
      ));
    }
    let (versioned, busy) = self
      .store
      .blocking(|store| {
        let (files, writers) = store.reads.with(|conn| {
          Ok((
            records::all_files(conn)?,
            records::registered_writers(conn)?,
          ))
        })?;
        let mut liveness = WriterLiveness::new(&store.root);
        let busy = writers.into_iter().any(|writer| {
          writer != store.writer.id() && liveness.state(&writer) == WriterState::Live
        });
        Ok((files, busy))
      })
      .await?;
    if busy {
      return Err(Error::new(
        ErrorKind::StoreInUse,
        "Another process has this store open: stop every app that uses it, then run the \
         downgrade again",
      ));
    }

    // Files are renamed many at a time, so that their commits share transactions.
    let mut report = Downgrade::default();
    // 3.x could not find the file of a record whose version cannot be read: it is named, and
    // left as it is.
    for (id, err) in &versioned.unreadable {
      let id = id
        .as_ref()
        .map_or_else(|text| text.clone(), |id| id.as_str().to_owned());
      report.failed.push((id, err.message().to_owned()));
    }
    let versioned: Vec<_> = versioned
      .named
      .into_iter()
      .filter(|(_, version)| *version != FileVersion::Legacy)
      .collect();
    for chunk in versioned.chunks(256) {
      let mut tasks = tokio::task::JoinSet::new();
      for (id, version) in chunk.iter().cloned() {
        let store = Arc::clone(&self.store);
        tasks.spawn(async move {
          let (link_id, link_version) = (id.clone(), version.clone());
          let linked = store
            .blocking(move |store| store.root.link_legacy_name(&link_id, &link_version))
            .await;
          let outcome = match linked {
            Ok(()) => {
              store
                .records
                .commit(Change::ToLegacyName {
                  id: id.clone(),
                  version,
                })
                .await
            }
            Err(err) => Err(err),
          };
          (id, outcome)
        });
      }
      while let Some(done) = tasks.join_next().await {
        let (id, outcome) =
          done.map_err(|e| Error::new(ErrorKind::Storage, format!("A rename failed: {e}")))?;
        match outcome {
          Ok(Outcome::Written { .. }) => report.renamed += 1,
          Ok(_) => {}
          Err(err) => report
            .failed
            .push((id.as_str().to_owned(), err.message().to_owned())),
        }
      }
    }
    Ok(report)
  }
}

/// Held while a rotation runs.
type RotationClaim = tokio::sync::OwnedMutexGuard<()>;

/// Re-wrapped keys per commit during a rotation.
const ROTATION_BATCH: usize = 256;

/// A record's file, as found.
enum Current {
  /// No record.
  Gone,
  /// The record names a file that is not there.
  Missing(PathBuf),
  Open(StoredRecord, std::fs::File, PathBuf),
}

/// What `verifyStore` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
  /// Records checked (records deleted while the check ran are not counted).
  pub records: usize,
  /// Records whose file decrypts under their key.
  pub intact: usize,
  /// Records whose file is missing: (id, path).
  pub missing: Vec<(String, PathBuf)>,
  /// Records whose file does not decrypt, or whose key cannot be read: (id, why).
  pub damaged: Vec<(String, String)>,
  /// Files no record names, left by no live writer.
  pub orphans: Vec<PathBuf>,
  /// Orphans removed (`repair`).
  pub removed: usize,
  /// Orphans `repair` could not remove: (path, why).
  pub unremoved: Vec<(PathBuf, String)>,
  /// What SQLite's quick check reported; empty when the database is sound.
  pub database: Vec<String>,
}

impl Verification {
  /// Whether the store is sound now: every record intact, the database sound, no orphan left.
  pub fn healthy(&self) -> bool {
    self.missing.is_empty()
      && self.damaged.is_empty()
      && self.database.is_empty()
      && self.orphans.len() == self.removed
  }
}

/// What a downgrade did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Downgrade {
  /// Files that now have 3.x's name.
  pub renamed: usize,
  /// Records left as they were, with the reason: their file is missing or could not be linked.
  pub failed: Vec<(String, String)>,
}

/// Lowers the calling worker thread's scheduling priority, once. Encryption of large images
/// keeps every core busy during a storm of saves; at a lower priority it gives way to the
/// JavaScript thread, whose event loop would otherwise wait for the scheduler's next turn.
fn yield_to_javascript() {
  thread_local! {
    static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
  }
  LOWERED.with(|lowered| {
    if !lowered.replace(true) {
      #[cfg(target_os = "linux")]
      // SAFETY: plain system calls on this thread's own id; a failure leaves the priority as it
      // was, which is harmless.
      unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, WORKER_NICENESS);
      }
    }
  });
}

/// How much lower than the JavaScript thread the workers run (a nice value: 0 is normal, 19 the
/// lowest). At 10, the scheduler gives a busy JavaScript thread about nine times their share.
#[cfg(target_os = "linux")]
const WORKER_NICENESS: libc::c_int = 10;

/// Reads an image file for `saveImageFromFile` and `updateImageFromFile`.
fn read_image_file(path: &str) -> Result<Vec<u8>> {
  let unreadable = |why: String| {
    Error::new(
      ErrorKind::FileNotReadable,
      format!("Cannot read the image file {}: {why}", quote(path)),
    )
  };
  if path.is_empty() || path.contains('\0') {
    return Err(unreadable(
      "expected a non-empty file path without NUL characters".into(),
    ));
  }
  let metadata = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
  if !metadata.is_file() {
    return Err(unreadable("it is not a regular file".into()));
  }
  std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

/// Counts calls in progress and, once closed, turns new ones away.
#[derive(Default)]
struct Gate {
  state: Mutex<GateState>,
  idle: Condvar,
}

#[derive(Default)]
struct GateState {
  closed: bool,
  active: usize,
}

struct Pass<'a>(&'a Gate);

impl Gate {
  fn enter(&self) -> Result<Pass<'_>> {
    self.hold()?;
    Ok(Pass(self))
  }

  fn is_closed(&self) -> bool {
    self.state.lock().expect("gate lock").closed
  }

  fn hold(&self) -> Result<()> {
    let mut state = self.state.lock().expect("gate lock");
    if state.closed {
      return Err(Error::new(
        ErrorKind::NotInitialized,
        "Pixstore is closed: call initPixstoreBackend before using it again",
      ));
    }
    state.active += 1;
    Ok(())
  }

  fn release(&self) {
    let mut state = self.state.lock().expect("gate lock");
    state.active -= 1;
    if state.active == 0 {
      self.idle.notify_all();
    }
  }

  fn close_and_wait(&self) {
    let mut state = self.state.lock().expect("gate lock");
    state.closed = true;
    while state.active > 0 {
      state = self.idle.wait(state).expect("gate lock");
    }
  }
}

impl Drop for Pass<'_> {
  fn drop(&mut self) {
    self.0.release();
  }
}
