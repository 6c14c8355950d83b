//! The image root: where encrypted files live, how they are named, and how they are written so
//! that a crash never leaves a record pointing at a half-written file.
//!
//! Layout, keeping pixstore 3.x's places:
//!
//! ```text
//! <root>/KEY.pixstore-image                 written by 3.x (the record has no version)
//! <root>/DIR/KEY.VERSION.pixstore-image     written by us; VERSION is WRITER-SEQ
//! <root>/.pixstore/writers/WRITER.lock      held locked by each live store instance
//! ```
//!
//! Files are never overwritten: each write gets a new version, so until the record that names a
//! file is committed, nothing else does. A file no record names is an orphan. An orphan whose
//! writer's lock file is there and can be locked was left by a crash and is removed by the
//! sweep; a live writer's is left alone, since its record may be about to commit. Files 3.x
//! wrote, and files of writers that closed cleanly, are never removed by a sweep.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::error::{Error, ErrorKind, Result};
use super::ids::ImageId;

pub const EXTENSION: &str = "pixstore-image";
const CONTROL_FOLDER: &str = ".pixstore";
const WRITERS_FOLDER: &str = "writers";
const WRITER_ID_LEN: usize = 10;

/// Which file of an image a record names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileVersion {
  /// pixstore 3.x's `KEY.pixstore-image`.
  Legacy,
  /// Our `KEY.WRITER-SEQ.pixstore-image`.
  Versioned(String),
}

impl FileVersion {
  /// Reads the record column, where NULL is 3.x's unversioned file. A version that is not of
  /// our making is refused rather than joined to a path.
  pub fn from_column(value: Option<String>, id: &str) -> Result<Self> {
    match value {
      None => Ok(FileVersion::Legacy),
      Some(version) if parse_version(&version).is_some() => Ok(FileVersion::Versioned(version)),
      Some(_) => Err(Error::new(
        ErrorKind::Integrity,
        format!("The record of image {id} names a file version this store did not write"),
      )),
    }
  }

  pub fn to_column(&self) -> Option<&str> {
    match self {
      FileVersion::Legacy => None,
      FileVersion::Versioned(version) => Some(version),
    }
  }

  fn file_name(&self, key: &str) -> String {
    match self {
      FileVersion::Legacy => format!("{key}.{EXTENSION}"),
      FileVersion::Versioned(version) => format!("{key}.{version}.{EXTENSION}"),
    }
  }
}

/// The folder that holds every encrypted file.
#[derive(Clone, Debug)]
pub struct ImageRoot {
  root: PathBuf,
}

impl ImageRoot {
  /// Opens the image root, creating it (owner-only) when missing.
  pub fn open(root: &Path) -> Result<Self> {
    fs::DirBuilder::new()
      .recursive(true)
      .mode(0o700)
      .create(root)
      .map_err(|e| Error::storage("create the image root", root, &e))?;
    Ok(ImageRoot {
      root: root.to_path_buf(),
    })
  }

  pub fn path(&self) -> &Path {
    &self.root
  }

  /// The folder of an id's files: the root, or `<root>/DIR`.
  pub fn folder(&self, id: &ImageId) -> PathBuf {
    match id.dir() {
      Some(dir) => self.root.join(dir),
      None => self.root.clone(),
    }
  }

  pub fn file(&self, id: &ImageId, version: &FileVersion) -> PathBuf {
    self.folder(id).join(version.file_name(id.key()))
  }

  /// Writes a new file and makes its content durable. The caller makes the folder entry durable
  /// with [`sync_folder`] before committing a record that names it. On failure nothing is left.
  pub fn write_new(&self, id: &ImageId, version: &FileVersion, bytes: &Staged) -> Result<PathBuf> {
    let folder = self.folder(id);
    if !folder.is_dir() {
      match fs::DirBuilder::new().mode(0o700).create(&folder) {
        Ok(()) => sync_folder(&self.root)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::storage("create the folder", &folder, &e)),
      }
    }

    let path = folder.join(version.file_name(id.key()));
    let written = OpenOptions::new()
      .write(true)
      .create_new(true)
      .mode(0o600)
      .open(&path)
      .and_then(|file| bytes.write_to(file));
    match written {
      Ok(()) => Ok(path),
      Err(e) => {
        let _ = fs::remove_file(&path);
        Err(Error::storage("write the encrypted file", &path, &e))
      }
    }
  }

  /// Gives a versioned file its 3.x name too, replacing whatever stood there, and makes the new
  /// name durable. Linked where the filesystem allows, copied otherwise.
  pub fn link_legacy_name(&self, id: &ImageId, version: &FileVersion) -> Result<()> {
    let from = self.file(id, version);
    let to = self.file(id, &FileVersion::Legacy);
    let staging = self.folder(id).join(format!(".{}.downgrade", id.key()));
    let _ = fs::remove_file(&staging);
    fs::hard_link(&from, &staging)
      .or_else(|_| {
        fs::copy(&from, &staging)?;
        File::open(&staging)?.sync_all()
      })
      .and_then(|()| fs::rename(&staging, &to))
      .map_err(|e| Error::storage("give 3.x's name to", &from, &e))?;
    sync_folder(&self.folder(id))
  }

  /// Lists every encrypted file in the root and its folders, with the id and version its name
  /// stands for. Names of any other shape are not ours and are left out.
  pub fn list_files(&self) -> Result<Vec<StoredFile>> {
    let mut found = Vec::new();
    let mut folders = vec![(None, self.root.clone())];
    while let Some((dir, folder)) = folders.pop() {
      let entries = match fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
        Err(e) => return Err(Error::storage("list the folder", &folder, &e)),
      };
      for entry in entries {
        let entry = entry.map_err(|e| Error::storage("list the folder", &folder, &e))?;
        let Ok(name) = entry.file_name().into_string() else {
          continue;
        };
        let Ok(kind) = entry.file_type() else {
          continue;
        };
        if kind.is_dir() && dir.is_none() {
          if ImageId::parse(&format!("{name}:k")).is_ok() {
            folders.push((Some(name), entry.path()));
          }
        } else if kind.is_file() {
          if let Some(file) = StoredFile::from_name(dir.as_deref(), &name, entry.path()) {
            found.push(file);
          }
        }
      }
    }
    Ok(found)
  }

  fn writers_folder(&self) -> PathBuf {
    self.root.join(CONTROL_FOLDER).join(WRITERS_FOLDER)
  }
}

/// An encrypted file found on disk.
#[derive(Clone, Debug)]
pub struct StoredFile {
  pub id: ImageId,
  pub version: FileVersion,
  pub path: PathBuf,
}

impl StoredFile {
  fn from_name(dir: Option<&str>, name: &str, path: PathBuf) -> Option<Self> {
    let stem = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    let (key, version) = match stem.split_once('.') {
      Some((key, version)) => {
        parse_version(version)?;
        (key, FileVersion::Versioned(version.to_owned()))
      }
      None => (stem, FileVersion::Legacy),
    };
    let id = match dir {
      Some(dir) => ImageId::parse(&format!("{dir}:{key}")),
      None => ImageId::parse(key),
    }
    .ok()?;
    Some(StoredFile { id, version, path })
  }

  /// The writer that made this file, when it is one of ours.
  pub fn writer(&self) -> Option<&str> {
    match &self.version {
      FileVersion::Legacy => None,
      FileVersion::Versioned(version) => parse_version(version).map(|(writer, _)| writer),
    }
  }
}

/// Splits `WRITER-SEQ`, where WRITER is base 36 and SEQ hexadecimal.
fn parse_version(version: &str) -> Option<(&str, &str)> {
  let (writer, seq) = version.split_once('-')?;
  let writer_ok = writer.len() == WRITER_ID_LEN
    && writer
      .bytes()
      .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
  let seq_ok = !seq.is_empty() && seq.len() <= 16 && seq.bytes().all(|b| b.is_ascii_hexdigit());
  (writer_ok && seq_ok).then_some((writer, seq))
}

/// One live store instance's claim on the files it writes. Its lock file stays locked until the
/// instance is dropped or its process dies, which is how a sweep tells live writers from dead.
#[derive(Debug)]
pub struct Writer {
  id: String,
  lock_path: PathBuf,
  lock: std::sync::Mutex<Option<File>>,
  seq: AtomicU64,
}

impl Writer {
  pub fn register(root: &ImageRoot) -> Result<Writer> {
    let folder = root.writers_folder();
    fs::DirBuilder::new()
      .recursive(true)
      .mode(0o700)
      .create(&folder)
      .map_err(|e| Error::storage("create the folder", &folder, &e))?;

    let mut rng = rand::rng();
    let id: String = (0..WRITER_ID_LEN)
      .map(|_| char::from_digit(rng.random_range(0..36), 36).expect("digit below 36"))
      .collect();

    // The lock is taken under a temporary name and then renamed into place, so no sweep ever
    // sees this writer's lock file unlocked.
    let lock_path = folder.join(format!("{id}.lock"));
    let staging = folder.join(format!("{id}.lock.new"));
    let lock = OpenOptions::new()
      .write(true)
      .create_new(true)
      .mode(0o600)
      .open(&staging)
      .and_then(|file| file.try_lock().map(|()| file).map_err(io::Error::from))
      .and_then(|file| fs::rename(&staging, &lock_path).map(|()| file))
      .map_err(|e| Error::storage("register a writer lock at", &lock_path, &e))?;

    Ok(Writer {
      id,
      lock_path,
      lock: std::sync::Mutex::new(Some(lock)),
      seq: AtomicU64::new(0),
    })
  }

  /// Removes the lock file and lets go of the lock: this writer will write no more. The sweep
  /// then counts it as closed cleanly.
  pub fn release(&self) {
    let lock = self.lock.lock().expect("writer lock").take();
    if lock.is_some() {
      let _ = fs::remove_file(&self.lock_path);
    }
  }

  pub fn id(&self) -> &str {
    &self.id
  }

  /// A version no other file of any writer has.
  pub fn next_version(&self) -> FileVersion {
    let seq = self.seq.fetch_add(1, Ordering::Relaxed);
    FileVersion::Versioned(format!("{}-{seq:x}", self.id))
  }
}

impl Drop for Writer {
  fn drop(&mut self) {
    self.release();
  }
}

/// What a sweep knows of a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
  /// Its lock is held: it may still commit a record naming any of its files.
  Live,
  /// Its lock file is there but unlocked: it died (a crash, SIGKILL) and commits nothing more.
  Dead,
  /// No lock file: it closed cleanly, or a sweep already cleaned up after it. A file of its
  /// that no record names was not left by a crash (a database restored from a backup, or
  /// pointed at a new file, looks like this), so the sweep leaves it alone.
  Gone,
}

/// Tells live writers from dead ones, asking each lock once.
pub struct WriterLiveness<'a> {
  root: &'a ImageRoot,
  known: HashMap<String, WriterState>,
}

impl<'a> WriterLiveness<'a> {
  pub fn new(root: &'a ImageRoot) -> Self {
    WriterLiveness {
      root,
      known: HashMap::new(),
    }
  }

  pub fn state(&mut self, writer: &str) -> WriterState {
    let path = self.root.writers_folder().join(format!("{writer}.lock"));
    *self
      .known
      .entry(writer.to_owned())
      .or_insert_with(|| lock_state(&path))
  }

  /// Removes the lock files of the dead writers in `writers`, and staging files of registrations
  /// that died (a `.lock.new` older than a minute: a younger one may be a registration under
  /// way).
  pub fn remove_dead_locks(&mut self, writers: &[String]) {
    let folder = self.root.writers_folder();
    let Ok(entries) = fs::read_dir(&folder) else {
      return;
    };
    for entry in entries.flatten() {
      let path = entry.path();
      let name = entry.file_name().to_string_lossy().into_owned();
      let dead = if let Some(writer) = name.strip_suffix(".lock") {
        writers.iter().any(|w| w == writer) && self.state(writer) == WriterState::Dead
      } else if name.ends_with(".lock.new") {
        let age = entry
          .metadata()
          .and_then(|m| m.modified())
          .ok()
          .and_then(|modified| modified.elapsed().ok());
        age.is_some_and(|age| age.as_secs() > 60) && lock_state(&path) == WriterState::Dead
      } else {
        false
      };
      if dead {
        let _ = fs::remove_file(&path);
      }
    }
  }
}

fn lock_state(path: &Path) -> WriterState {
  match File::open(path) {
    Ok(file) if file.try_lock().is_err() => WriterState::Live,
    Ok(_) => WriterState::Dead,
    Err(_) => WriterState::Gone,
  }
}

/// Below this size a file is written through the page cache: a direct write of a small file
/// saves no copy worth having and pads it to a whole block.
const DIRECT_MIN: usize = 64 * 1024;

/// The alignment and granularity of a direct write: a page, which covers every logical block
/// size of the disks Linux supports for it.
const BLOCK: usize = 4096;

/// The bytes of a new file, laid out in memory so that a large one can be written with
/// `O_DIRECT`: starting on a block boundary and followed by zeros up to a whole block. The disk
/// then reads them from here, with no copy into the page cache (for a 1.3 MB image that copy
/// cost more CPU than its encryption).
pub struct Staged {
  buffer: Vec<u8>,
  start: usize,
  len: usize,
}

impl Staged {
  /// The bytes of `parts` one after another, laid out for a direct write when they are large.
  /// Only the alignment gap and the padding are zeroed: the parts are copied once.
  pub fn concat(parts: &[&[u8]]) -> Self {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let (mut buffer, start, end) = if len < DIRECT_MIN {
      (Vec::with_capacity(len), 0, len)
    } else {
      let blocks = len.div_ceil(BLOCK) * BLOCK;
      let mut buffer: Vec<u8> = Vec::with_capacity(blocks + BLOCK);
      let start = buffer.as_ptr().align_offset(BLOCK);
      buffer.resize(start, 0);
      (buffer, start, start + blocks)
    };
    for part in parts {
      buffer.extend_from_slice(part);
    }
    buffer.resize(end, 0);
    // The capacity was enough, so the buffer never moved and `start` is still on a boundary.
    debug_assert!(start == 0 || buffer.as_ptr().wrapping_add(start).align_offset(BLOCK) == 0);
    Self { buffer, start, len }
  }

  fn blocks(&self) -> &[u8] {
    &self.buffer[self.start..self.start + self.len.div_ceil(BLOCK) * BLOCK]
  }

  /// Writes the bytes to `file`, new and empty, and makes them durable: a large file directly
  /// from this buffer where the filesystem takes direct writes, through the page cache where it
  /// does not.
  fn write_to(&self, mut file: File) -> io::Result<()> {
    if self.len >= DIRECT_MIN && self.write_direct(&file)? {
      return Ok(());
    }
    file.write_all(self.as_ref())?;
    file.sync_all()
  }

  /// Writes the blocks with `O_DIRECT`, cuts the padding off and fsyncs: `Ok(false)` when the
  /// filesystem refuses direct writes (`EINVAL`, as tmpfs on older kernels, ramfs or a stricter
  /// alignment do), leaving `file` empty and buffered again for the caller to write.
  #[cfg(target_os = "linux")]
  fn write_direct(&self, file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    let set_direct = |on: bool| -> io::Result<()> {
      let fd = file.as_raw_fd();
      // SAFETY: fcntl on a descriptor this function borrows open; no memory is passed.
      let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
      if flags < 0 {
        return Err(io::Error::last_os_error());
      }
      let flags = if on {
        flags | libc::O_DIRECT
      } else {
        flags & !libc::O_DIRECT
      };
      // SAFETY: as above.
      if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
      }
      Ok(())
    };
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);

    match set_direct(true) {
      Ok(()) => {}
      Err(e) if refused(&e) => return Ok(false),
      Err(e) => return Err(e),
    }
    // The padding goes to disk with the last block and is cut off again before the fsync that
    // makes the file durable; until a record names the file, nothing reads it.
    let written = file
      .write_all_at(self.blocks(), 0)
      .and_then(|()| file.set_len(self.len as u64))
      .and_then(|()| file.sync_all());
    match written {
      Ok(()) => Ok(true),
      // Opened for direct writes but refusing this alignment: start again, buffered.
      Err(e) if refused(&e) => {
        set_direct(false)?;
        file.set_len(0)?;
        Ok(false)
      }
      Err(e) => Err(e),
    }
  }

  #[cfg(not(target_os = "linux"))]
  fn write_direct(&self, _file: &File) -> io::Result<bool> {
    Ok(false)
  }
}

impl AsRef<[u8]> for Staged {
  fn as_ref(&self) -> &[u8] {
    &self.buffer[self.start..self.start + self.len]
  }
}

impl AsMut<[u8]> for Staged {
  fn as_mut(&mut self) -> &mut [u8] {
    &mut self.buffer[self.start..self.start + self.len]
  }
}

/// Makes a folder's entries durable.
pub fn sync_folder(folder: &Path) -> Result<()> {
  File::open(folder)
    .and_then(|f| f.sync_all())
    .map_err(|e| Error::storage("sync the folder", folder, &e))
}

/// Removes a file; a file already gone is not an error.
pub fn remove_if_present(path: &Path) -> Result<bool> {
  match fs::remove_file(path) {
    Ok(()) => Ok(true),
    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
    Err(e) => Err(Error::storage("remove", path, &e)),
  }
}

#[cfg(test)]
mod tests {
  use std::os::unix::fs::PermissionsExt;

  use super::*;

  fn staged(bytes: &[u8]) -> Staged {
    Staged::concat(&[bytes])
  }

  #[test]
  fn names_round_trip_through_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let root = ImageRoot::open(dir.path()).unwrap();
    let writer = Writer::register(&root).unwrap();
    let id = ImageId::parse("cats:k1").unwrap();
    let version = writer.next_version();
    root.write_new(&id, &version, &staged(b"x")).unwrap();
    fs::write(dir.path().join("old1.pixstore-image"), b"y").unwrap();
    fs::write(dir.path().join("notes.txt"), b"z").unwrap();

    let mut found = root.list_files().unwrap();
    found.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    assert_eq!(found.len(), 2);
    assert_eq!(
      (found[0].id.as_str(), &found[0].version),
      ("cats:k1", &version)
    );
    assert_eq!(
      (found[1].id.as_str(), &found[1].version),
      ("old1", &FileVersion::Legacy)
    );
  }

  #[test]
  fn files_of_every_size_hold_exactly_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // tmpfs, where the kernel has it, refuses or ignores O_DIRECT: the buffered path then writes.
    let shm = Path::new("/dev/shm")
      .is_dir()
      .then(|| tempfile::tempdir_in("/dev/shm").unwrap());
    for place in [Some(&dir), shm.as_ref()].into_iter().flatten() {
      let root = ImageRoot::open(place.path()).unwrap();
      let writer = Writer::register(&root).unwrap();
      for len in [
        0,
        1,
        DIRECT_MIN - 1,
        DIRECT_MIN,
        DIRECT_MIN + 1,
        3 * BLOCK,
        1_356_138,
      ] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let (head, tail) = bytes.split_at(len / 3);
        let staged = Staged::concat(&[head, tail]);
        assert_eq!(staged.as_ref(), &bytes[..]);
        if len >= DIRECT_MIN {
          let blocks = staged.blocks();
          assert_eq!(blocks.as_ptr() as usize % BLOCK, 0, "len {len}");
          assert_eq!(blocks.len(), len.div_ceil(BLOCK) * BLOCK, "len {len}");
          assert!(blocks[len..].iter().all(|&b| b == 0), "len {len}");
        }
        let id = ImageId::parse(&format!("k{len}")).unwrap();
        let version = writer.next_version();
        let path = root.write_new(&id, &version, &staged).unwrap();
        assert_eq!(
          fs::read(&path).unwrap(),
          bytes,
          "len {len} in {:?}",
          place.path()
        );
        assert_eq!(
          fs::metadata(&path).unwrap().permissions().mode() & 0o777,
          0o600
        );
      }
    }
  }

  #[test]
  fn a_direct_write_the_filesystem_refuses_is_written_buffered() {
    // A buffer off its block boundary: ext4 and most disks refuse it with EINVAL at the write,
    // after the file was created, as a filesystem with stricter alignment would.
    let len = DIRECT_MIN + 123;
    let bytes: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
    let aligned = Staged::concat(&[&bytes]);
    let mut buffer = vec![0u8; aligned.buffer.len() + 1];
    let start = aligned.start + 1;
    buffer[start..start + len].copy_from_slice(&bytes);
    let misaligned = Staged { buffer, start, len };
    assert_ne!(misaligned.blocks().as_ptr() as usize % BLOCK, 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused");
    let file = File::create_new(&path).unwrap();
    if misaligned.write_direct(&file).unwrap() {
      // A filesystem that takes any alignment (tmpfs ignores O_DIRECT) wrote it whole.
      assert_eq!(fs::read(&path).unwrap(), bytes);
    } else {
      // Nothing of the refused attempt is left for the buffered write, on the same handle.
      assert_eq!(fs::metadata(&path).unwrap().len(), 0);
      misaligned.write_to(file).unwrap();
      assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    let root = ImageRoot::open(dir.path()).unwrap();
    let writer = Writer::register(&root).unwrap();
    let id = ImageId::parse("misaligned").unwrap();
    let written = root
      .write_new(&id, &writer.next_version(), &misaligned)
      .unwrap();
    assert_eq!(fs::read(&written).unwrap(), bytes);
  }

  #[test]
  fn a_live_writer_is_told_from_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = ImageRoot::open(dir.path()).unwrap();
    let live = Writer::register(&root).unwrap();
    let dead = Writer::register(&root).unwrap();
    let dead_id = dead.id.clone();
    // A dead process leaves its lock file behind, unlocked.
    let lock_path = dead.lock_path.clone();
    drop(dead);
    fs::write(&lock_path, b"").unwrap();

    let mut liveness = WriterLiveness::new(&root);
    assert_eq!(liveness.state(&live.id), WriterState::Live);
    assert_eq!(liveness.state(&dead_id), WriterState::Dead);
    assert_eq!(liveness.state("nosuchwrit"), WriterState::Gone);
    liveness.remove_dead_locks(std::slice::from_ref(&dead_id));
    assert!(!lock_path.exists());
    assert!(live.lock_path.exists());
  }

  #[test]
  fn versions_from_elsewhere_are_refused() {
    for bad in [
      "../../etc",
      "x",
      "abcdefghij-",
      "abcdefghij-zz",
      "ABCDEFGHIJ-1",
    ] {
      assert!(
        FileVersion::from_column(Some(bad.into()), "a").is_err(),
        "{bad}"
      );
    }
  }
}
