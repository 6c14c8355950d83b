//! A property test: random sequences of saves, updates, deletes, reads and reopenings drive a
//! real store, and every result is checked against an in-memory model of what it should hold.
//!
//! `PROPTEST_CASES` sets how many sequences run; `cargo test --test model -- --nocapture` shows
//! how many operations they made and how the outcomes were spread.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pixstore::core::crypto::{IV_LEN, KEY_LEN, TAG_LEN};
use pixstore::core::formats::{sniff, Format};
use pixstore::core::store::Call;
use pixstore::core::{Config, ConfigInput, Error, ErrorKind, ImageId, ImageRecord, Store};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{
  contextualize_config, FileFailurePersistence, TestCaseError, TestError, TestRunner,
};

/// Sequences per run unless `PROPTEST_CASES` says otherwise: a few seconds in a debug build.
const DEFAULT_CASES: u32 = 48;

/// Longest sequence: long enough for several saves (a quarter of the operations) and the
/// updates, deletes and reopenings between them.
const MAX_OPS: usize = 40;

/// How far back operations reach among the images a sequence saved.
const RECENT: u8 = 3;

/// An image to store. The ones with a tail are real images followed by bytes after their end
/// marker, which decoders ignore and the format check allows, so that versions of one image
/// differ byte for byte.
#[derive(Clone, Copy, Debug)]
enum Image {
  Png,
  Webp,
  Jpeg,
  PngWithTail(u8),
  JpegWithTail(u8),
  /// Not images: refused with `InvalidImage`.
  Text,
  TruncatedJpeg,
  Empty,
}

impl Image {
  fn bytes(self) -> Vec<u8> {
    let with_tail = |name, tail| {
      let mut bytes = asset(name);
      bytes.extend_from_slice(&[tail; 3]);
      bytes
    };
    match self {
      Image::Png => asset("1-pixel.png"),
      Image::Webp => asset("1-pixel.webp"),
      Image::Jpeg => asset("thumb-64.jpg"),
      Image::PngWithTail(tail) => with_tail("1-pixel.png", tail),
      Image::JpegWithTail(tail) => with_tail("thumb-64.jpg", tail),
      Image::Text => asset("not-an-image.txt"),
      Image::TruncatedJpeg => asset("truncated-jpeg.jpg"),
      Image::Empty => asset("empty.bin"),
    }
  }

  fn is_valid(self) -> bool {
    !matches!(self, Image::Text | Image::TruncatedJpeg | Image::Empty)
  }
}

/// The `dir` argument of a save.
#[derive(Clone, Copy, Debug)]
enum Dir {
  /// No dir: the id is a bare key.
  Root,
  /// `""`, which counts as no dir, as in 3.x.
  Blank,
  /// `"trips"`.
  Trips,
  /// `"  My Trips! "`, cleaned to `mytrips`.
  Messy,
  /// `"../.."`: nothing usable is left, so the save is refused with `InvalidArgument`.
  Unusable,
}

impl Dir {
  fn argument(self) -> Option<String> {
    let text = match self {
      Dir::Root => return None,
      Dir::Blank => "",
      Dir::Trips => "trips",
      Dir::Messy => "  My Trips! ",
      Dir::Unusable => "../..",
    };
    Some(text.to_owned())
  }

  /// The dir part of the ids a save under this dir draws.
  fn cleaned(self) -> Option<&'static str> {
    match self {
      Dir::Root | Dir::Blank | Dir::Unusable => None,
      Dir::Trips => Some("trips"),
      Dir::Messy => Some("mytrips"),
    }
  }
}

/// The id an operation names.
#[derive(Clone, Copy, Debug)]
enum Target {
  /// The image saved n saves ago in this sequence (0: the last one; counted round when fewer
  /// were saved), live or deleted. Counting back keeps new images in reach as old ones are
  /// deleted. Before the first save, an id never saved.
  Recent(u8),
  /// A well-formed id that was never saved.
  NeverSaved,
  /// A well-formed id in a dir that holds saved images, never saved itself.
  NeverSavedInDir,
  /// Not a well-formed id: refused with `InvalidId`.
  Malformed,
}

#[derive(Clone, Debug)]
enum Op {
  Save {
    image: Image,
    dir: Dir,
  },
  Update {
    target: Target,
    image: Image,
  },
  /// Updates of one id, all made before any is answered.
  UpdateAtOnce {
    target: Target,
    images: Vec<Image>,
  },
  Delete(Target),
  Read(Target),
  Exists(Target),
  Record(Target),
  /// Closes the store and opens it again on the same image root and database.
  Reopen,
}

fn image() -> impl Strategy<Value = Image> {
  prop_oneof![
    3 => Just(Image::Png),
    2 => Just(Image::Webp),
    2 => Just(Image::Jpeg),
    3 => any::<u8>().prop_map(Image::PngWithTail),
    3 => any::<u8>().prop_map(Image::JpegWithTail),
    1 => Just(Image::Text),
    1 => Just(Image::TruncatedJpeg),
    1 => Just(Image::Empty),
  ]
}

fn dir() -> impl Strategy<Value = Dir> {
  prop_oneof![
    4 => Just(Dir::Root),
    1 => Just(Dir::Blank),
    3 => Just(Dir::Trips),
    1 => Just(Dir::Messy),
    1 => Just(Dir::Unusable),
  ]
}

fn target() -> impl Strategy<Value = Target> {
  prop_oneof![
    12 => (0..RECENT).prop_map(Target::Recent),
    1 => Just(Target::NeverSaved),
    1 => Just(Target::NeverSavedInDir),
    1 => Just(Target::Malformed),
  ]
}

fn op() -> impl Strategy<Value = Op> {
  prop_oneof![
    5 => (image(), dir()).prop_map(|(image, dir)| Op::Save { image, dir }),
    5 => (target(), image()).prop_map(|(target, image)| Op::Update { target, image }),
    1 => (target(), vec(image(), 2..=4))
      .prop_map(|(target, images)| Op::UpdateAtOnce { target, images }),
    3 => target().prop_map(Op::Delete),
    3 => target().prop_map(Op::Read),
    1 => target().prop_map(Op::Exists),
    2 => target().prop_map(Op::Record),
    1 => Just(Op::Reopen),
  ]
}

/// What the store should hold.
#[derive(Default)]
struct Model {
  /// Every id saved in this sequence, in order.
  saved: Vec<String>,
  /// The live images, with the record of their last save or update.
  live: HashMap<String, (Vec<u8>, ImageRecord)>,
}

impl Model {
  fn id(&self, target: Target) -> String {
    match target {
      Target::Recent(_) if self.saved.is_empty() => "absent".to_owned(),
      Target::Recent(n) => {
        let back = usize::from(n) % self.saved.len();
        self.saved[self.saved.len() - 1 - back].clone()
      }
      Target::NeverSaved => "absent".to_owned(),
      Target::NeverSavedInDir => "trips:absent".to_owned(),
      Target::Malformed => "../escape".to_owned(),
    }
  }

  /// What `id` stands for now, for the tally.
  fn state(&self, id: &str) -> &'static str {
    if ImageId::parse(id).is_err() {
      "malformed"
    } else if self.live.contains_key(id) {
      "live"
    } else if self.saved.iter().any(|saved| saved == id) {
      "deleted"
    } else {
      "never saved"
    }
  }
}

/// How often each operation ended each way, over a whole run.
#[derive(Default)]
struct Tally {
  sequences: usize,
  ops: usize,
  /// By call and outcome; an `UpdateAtOnce` makes several calls.
  outcomes: BTreeMap<String, usize>,
}

impl Tally {
  fn count(&mut self, op: &str, outcome: impl std::fmt::Debug) {
    *self
      .outcomes
      .entry(format!("{op}: {outcome:?}"))
      .or_default() += 1;
  }
}

/// A store in a temporary folder, with the runtime its calls run on.
struct Harness {
  dir: tempfile::TempDir,
  runtime: tokio::runtime::Runtime,
  store: Arc<Store>,
}

impl Harness {
  fn new() -> Self {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(2)
      .enable_all()
      .build()
      .unwrap();
    let store = open(dir.path());
    Harness {
      dir,
      runtime,
      store,
    }
  }

  fn root(&self) -> PathBuf {
    self.dir.path().join("images")
  }

  fn call(&self) -> Call {
    self.store.call().expect("the store is open")
  }

  fn apply(&mut self, model: &mut Model, op: &Op, tally: &mut Tally) -> Check {
    match *op {
      Op::Save { image, dir } => {
        let bytes = image.bytes();
        let saved = self
          .runtime
          .block_on(self.call().save(bytes.clone(), dir.argument()));
        tally.count("save", outcome(&saved).map(drop));
        if let Dir::Unusable = dir {
          return refused(saved, ErrorKind::InvalidArgument);
        }
        if !image.is_valid() {
          return refused(saved, ErrorKind::InvalidImage);
        }

        let record = saved.map_err(unexpected)?;
        let id = ImageId::parse(&record.id).map_err(unexpected)?;
        prop_assert_eq!(id.dir(), dir.cleaned(), "the dir of {}", record.id);
        prop_assert!(
          !model.saved.contains(&record.id),
          "a save drew {}, which was drawn before",
          record.id
        );
        self.check_record(&record)?;
        model.saved.push(record.id.clone());
        model.live.insert(record.id.clone(), (bytes, record));
      }

      Op::Update { target, image } => {
        let id = model.id(target);
        let updated = self
          .runtime
          .block_on(self.call().update(&id, image.bytes()));
        self.check_updates(model, "update", target, &id, vec![(image, updated)], tally)?;
      }

      Op::UpdateAtOnce { target, ref images } => {
        let id = model.id(target);
        let updated = self.runtime.block_on(async {
          let tasks: Vec<_> = images
            .iter()
            .map(|image| {
              let (call, id, bytes) = (self.call(), id.clone(), image.bytes());
              tokio::spawn(async move { call.update(&id, bytes).await })
            })
            .collect();
          let mut updated = Vec::new();
          for task in tasks {
            updated.push(task.await.expect("an update task panicked"));
          }
          updated
        });
        let results = images.iter().copied().zip(updated).collect();
        self.check_updates(model, "updates at once", target, &id, results, tally)?;
      }

      Op::Delete(target) => {
        let id = model.id(target);
        let deleted = self.runtime.block_on(self.call().delete(&id));
        tally.count(&format!("delete {}", model.state(&id)), outcome(&deleted));
        if let Target::Malformed = target {
          return refused(deleted, ErrorKind::InvalidId);
        }
        let existed = model.live.remove(&id).is_some();
        prop_assert_eq!(deleted, Ok(existed), "delete {}", id);
      }

      Op::Read(target) => {
        let id = model.id(target);
        let read = self.runtime.block_on(self.call().read(&id));
        tally.count(
          &format!("read {}", model.state(&id)),
          outcome(&read).map(|image| image.is_some()),
        );
        if let Target::Malformed = target {
          return refused(read, ErrorKind::InvalidId);
        }
        check_read(model, &id, read)?;
      }

      Op::Exists(target) => {
        let id = model.id(target);
        let exists = self.runtime.block_on(self.call().exists(&id));
        tally.count(&format!("exists {}", model.state(&id)), outcome(&exists));
        if let Target::Malformed = target {
          return refused(exists, ErrorKind::InvalidId);
        }
        prop_assert_eq!(exists, Ok(model.live.contains_key(&id)), "exists {}", id);
      }

      Op::Record(target) => {
        let id = model.id(target);
        let found = self.store.record(&id);
        tally.count(
          &format!("record {}", model.state(&id)),
          outcome(&found).map(|record| record.is_some()),
        );
        if let Target::Malformed = target {
          return refused(found, ErrorKind::InvalidId);
        }
        self.check_record_of(model, &id, found)?;
      }

      Op::Reopen => {
        tally.count("reopen", ());
        self.close_and_check(model)?;
        self.store = open(self.dir.path());
        self.check_whole_model(model)?;
      }
    }

    // A commit removes the file a record named before it answers (see `records::Outcome`), so
    // there is nothing to wait for.
    self.check_files(model)
  }

  /// Checks updates of one id made at once, or one alone: each is refused as the model says, or
  /// gets a new key and a token above the record's that no other of them got. Commits are
  /// serial, so the one with the largest token is the image now.
  fn check_updates(
    &self,
    model: &mut Model,
    op: &str,
    target: Target,
    id: &str,
    results: Vec<(Image, Result<ImageRecord, Error>)>,
    tally: &mut Tally,
  ) -> Check {
    let state = model.state(id);
    let mut written = Vec::new();
    for (image, updated) in results {
      tally.count(&format!("{op} {state}"), outcome(&updated).map(drop));
      if let Target::Malformed = target {
        refused(updated, ErrorKind::InvalidId)?;
        continue;
      }
      let Some((_, before)) = model.live.get(id) else {
        let err = refused_with(updated, ErrorKind::NotFound)?;
        prop_assert_eq!(err.message(), format!("Image not found: {id}"));
        continue;
      };
      if !image.is_valid() {
        refused(updated, ErrorKind::InvalidImage)?;
        continue;
      }

      let record = updated.map_err(unexpected)?;
      prop_assert_eq!(&record.id, id);
      prop_assert!(
        record.token > before.token,
        "the token of {id} went from {} to {}",
        before.token,
        record.token
      );
      prop_assert_ne!(&record.key, &before.key, "an update of {} kept its key", id);
      prop_assert_ne!(&record.iv, &before.iv, "an update of {} kept its IV", id);
      self.check_record(&record)?;
      written.push((image.bytes(), record));
    }

    let mut tokens: Vec<i64> = written.iter().map(|(_, record)| record.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    prop_assert_eq!(
      tokens.len(),
      written.len(),
      "updates of {} made at once share a token",
      id
    );
    if let Some(last) = written.into_iter().max_by_key(|(_, record)| record.token) {
      model.live.insert(id.to_owned(), last);
    }
    Ok(())
  }

  /// The parts of a record the store chooses: meta of the right lengths and a proof that
  /// verifies.
  fn check_record(&self, record: &ImageRecord) -> Check {
    for (name, text, len) in [
      ("key", &record.key, KEY_LEN),
      ("iv", &record.iv, IV_LEN),
      ("tag", &record.tag, TAG_LEN),
    ] {
      let bytes = BASE64.decode(text).map_err(unexpected)?;
      prop_assert_eq!(bytes.len(), len, "the {} of {}", name, record.id);
    }
    prop_assert!(
      record.token > 0,
      "the token of {} is {}",
      record.id,
      record.token
    );
    prop_assert!(
      self.store.verify_proof(&record.id, &record.stateless_proof),
      "the proof of {} does not verify",
      record.id
    );
    Ok(())
  }

  /// `record(id)` answers the record the last save or update returned, or nothing.
  fn check_record_of(
    &self,
    model: &Model,
    id: &str,
    found: Result<Option<ImageRecord>, Error>,
  ) -> Check {
    let found = found.map_err(unexpected)?;
    let Some((_, expected)) = model.live.get(id) else {
      prop_assert!(found.is_none(), "record {}: a record, expected none", id);
      return Ok(());
    };
    let found =
      found.ok_or_else(|| TestCaseError::fail(format!("record {id}: None, expected a record")))?;
    prop_assert_eq!(&found.id, &expected.id);
    prop_assert_eq!(found.token, expected.token, "the token of {}", id);
    // Compared, not printed: a failure report should not carry key material. A proof depends
    // on when it was issued, so it is verified rather than compared.
    let meta = |r: &ImageRecord| (r.key.clone(), r.iv.clone(), r.tag.clone());
    prop_assert!(
      meta(&found) == meta(expected),
      "the meta of {} is not the one its last write returned",
      id
    );
    self.check_record(&found)
  }

  /// Every id saved so far has the record and the bytes the model holds, or none.
  fn check_whole_model(&self, model: &Model) -> Check {
    for id in &model.saved {
      self.check_record_of(model, id, self.store.record(id))?;
      check_read(model, id, self.runtime.block_on(self.call().read(id)))?;
    }
    Ok(())
  }

  /// Exactly one encrypted file per live record, in its id's folder and named with a version;
  /// none for deleted images or replaced versions, and no file of a refused save.
  fn check_files(&self, model: &Model) -> Check {
    let mut on_disk = Vec::new();
    for path in files_under(&self.root()) {
      let name = path.file_name().unwrap().to_string_lossy().into_owned();
      let Some(stem) = name.strip_suffix(".pixstore-image") else {
        continue;
      };
      let (key, version) = stem
        .split_once('.')
        .ok_or_else(|| TestCaseError::fail(format!("{} has no version", path.display())))?;
      prop_assert!(
        is_version(version),
        "{} has a version not of the form WRITER-SEQ",
        path.display()
      );
      let folder = path.parent().unwrap().strip_prefix(self.root()).unwrap();
      let id = match folder.to_str().unwrap() {
        "" => key.to_owned(),
        dir => format!("{dir}:{key}"),
      };
      on_disk.push(id);
    }
    on_disk.sort();

    let mut live: Vec<String> = model.live.keys().cloned().collect();
    live.sort();
    prop_assert_eq!(on_disk, live, "the encrypted files, by id");
    Ok(())
  }

  /// Closes the store and checks what a clean close leaves: calls refused, the files of the live
  /// records, no writer lock, and no trash or writer rows in the database.
  fn close_and_check(&self, model: &Model) -> Check {
    self.store.close();

    refused(self.store.call().map(|_| ()), ErrorKind::NotInitialized)?;
    refused(self.store.record("a"), ErrorKind::NotInitialized)?;
    self.check_files(model)?;

    let locks = files_under(&self.root().join(".pixstore"));
    prop_assert!(locks.is_empty(), "left after close: {:?}", locks);

    let db = rusqlite::Connection::open(self.dir.path().join("store.sqlite")).unwrap();
    let count = |table: &str| -> i64 {
      db.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
      })
      .unwrap()
    };
    prop_assert_eq!(count("image_records"), model.live.len() as i64);
    prop_assert_eq!(count("pixstore_trash"), 0, "trash rows left after close");
    prop_assert_eq!(count("pixstore_writers"), 0, "writer rows left after close");
    Ok(())
  }
}

impl Drop for Harness {
  /// Closing waits for the background sweep, so the temporary folder goes after it, also when a
  /// case fails half way.
  fn drop(&mut self) {
    self.store.close();
  }
}

type Check = Result<(), TestCaseError>;

/// `read(id)` gives back the bytes of the last save or update, or nothing.
fn check_read(model: &Model, id: &str, read: Result<Option<Vec<u8>>, Error>) -> Check {
  let read = read.map_err(unexpected)?;
  let expected = model.live.get(id).map(|(bytes, _)| bytes);
  // Sizes, not bytes, in the message: a kilobyte of numbers would hide the rest.
  prop_assert!(
    read.as_ref() == expected,
    "read {}: {:?} bytes, expected {:?}",
    id,
    read.as_ref().map(Vec::len),
    expected.map(Vec::len)
  );
  Ok(())
}

fn run(ops: &[Op], tally: &mut Tally) -> Check {
  tally.sequences += 1;
  let mut harness = Harness::new();
  let mut model = Model::default();
  for op in ops {
    tally.ops += 1;
    harness.apply(&mut model, op, tally)?;
  }
  harness.close_and_check(&model)
}

#[test]
fn the_store_behaves_as_its_model() {
  let config = contextualize_config(ProptestConfig {
    cases: DEFAULT_CASES,
    source_file: Some(file!()),
    // Failing sequences are kept in `tests/model.proptest-regressions` and run first next time.
    failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
      "proptest-regressions",
    ))),
    ..ProptestConfig::default()
  });
  let tally = RefCell::new(Tally::default());
  let started = std::time::Instant::now();

  let result = TestRunner::new(config).run(&vec(op(), 1..=MAX_OPS), |ops| {
    run(&ops, &mut tally.borrow_mut())
  });

  let tally = tally.into_inner();
  let calls: usize = tally.outcomes.values().sum();
  println!(
    "{} sequences, {} operations, {calls} calls in {:.1?}",
    tally.sequences,
    tally.ops,
    started.elapsed()
  );
  for (outcome, n) in &tally.outcomes {
    println!("{n:>8}  {outcome}");
  }
  match result {
    Ok(()) => {}
    Err(TestError::Fail(why, ops)) => {
      let ops: Vec<String> = ops.iter().map(|op| format!("  {op:?}")).collect();
      panic!("{why}\nshrunk failing sequence:\n{}", ops.join("\n"))
    }
    Err(TestError::Abort(why)) => panic!("aborted: {why}"),
  }
}

/// The model's assumptions about the images: the valid ones, tails included, are recognised as
/// allowed formats, and the others are not images.
#[test]
fn the_images_are_what_the_model_takes_them_for() {
  for (image, format) in [
    (Image::Png, Some(Format::Png)),
    (Image::Webp, Some(Format::Webp)),
    (Image::Jpeg, Some(Format::Jpeg)),
    (Image::PngWithTail(0xff), Some(Format::Png)),
    (Image::JpegWithTail(0xd9), Some(Format::Jpeg)),
    (Image::Text, None),
    (Image::TruncatedJpeg, None),
    (Image::Empty, None),
  ] {
    assert_eq!(sniff(&image.bytes()), format, "{image:?}");
    assert_eq!(image.is_valid(), format.is_some(), "{image:?}");
  }
}

fn open(dir: &Path) -> Arc<Store> {
  let config = Config::resolve(ConfigInput {
    image_root_dir: Some(dir.join("images").to_string_lossy().into_owned()),
    database_path: Some(dir.join("store.sqlite").to_string_lossy().into_owned()),
    default_endpoint_enabled: Some(false),
    // Proofs that never expire, so that a slow case cannot fail on a proof's age.
    stateless_key_window_length: Some(-1.0),
    ..Default::default()
  })
  .unwrap();
  Store::open(config).unwrap()
}

fn asset(name: &str) -> Vec<u8> {
  std::fs::read(
    Path::new(env!("CARGO_MANIFEST_DIR"))
      .join("assets")
      .join(name),
  )
  .unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
  let mut found = Vec::new();
  for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
    let path = entry.path();
    if path.is_dir() {
      found.extend(files_under(&path));
    } else {
      found.push(path);
    }
  }
  found
}

/// `WRITER-SEQ`: ten base-36 characters, then hexadecimal.
fn is_version(version: &str) -> bool {
  let Some((writer, seq)) = version.split_once('-') else {
    return false;
  };
  writer.len() == 10
    && writer
      .bytes()
      .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    && !seq.is_empty()
    && seq.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a call returned, for the tally: its value or its error kind.
fn outcome<T: Clone>(result: &Result<T, Error>) -> Result<T, ErrorKind> {
  result.clone().map_err(|e| e.kind())
}

fn refused<T>(result: Result<T, Error>, kind: ErrorKind) -> Check {
  refused_with(result, kind).map(drop)
}

/// The error of `result`, when it is of `kind`. A success is not shown: it may be a record.
fn refused_with<T>(result: Result<T, Error>, kind: ErrorKind) -> Result<Error, TestCaseError> {
  match result {
    Err(err) if err.kind() == kind => Ok(err),
    Err(err) => Err(TestCaseError::fail(format!(
      "expected a {kind:?} error, got {err}"
    ))),
    Ok(_) => Err(TestCaseError::fail(format!(
      "expected a {kind:?} error, got a success"
    ))),
  }
}

fn unexpected(err: impl std::fmt::Display) -> TestCaseError {
  TestCaseError::fail(format!("unexpected error: {err}"))
}
