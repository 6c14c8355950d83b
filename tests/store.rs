//! The store driven from Rust, without Node: round trips, tokens, the orphan sweep and files
//! written by pixstore 3.x.

use std::path::Path;
use std::sync::Arc;

use pixstore::core::{crypto, Config, ConfigInput, ErrorKind, Store};

fn asset(name: &str) -> Vec<u8> {
  std::fs::read(
    Path::new(env!("CARGO_MANIFEST_DIR"))
      .join("assets")
      .join(name),
  )
  .unwrap()
}

fn open(dir: &Path) -> Arc<Store> {
  let config = Config::resolve(ConfigInput {
    image_root_dir: Some(dir.join("images").to_string_lossy().into_owned()),
    database_path: Some(dir.join("store.sqlite").to_string_lossy().into_owned()),
    default_endpoint_enabled: Some(false),
    ..Default::default()
  })
  .unwrap();
  Store::open(config).unwrap()
}

fn encrypted_files(root: &Path) -> Vec<String> {
  let mut found = Vec::new();
  for entry in walk(root) {
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    if name.ends_with(".pixstore-image") {
      found.push(name);
    }
  }
  found.sort();
  found
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
  let mut out = Vec::new();
  for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
    let path = entry.path();
    if path.is_dir() {
      out.extend(walk(&path));
    } else {
      out.push(path);
    }
  }
  out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_update_read_delete() {
  let dir = tempfile::tempdir().unwrap();
  let store = open(dir.path());
  let (png, jpeg) = (asset("vilnius-800.png"), asset("vilnius.jpg"));

  let saved = store
    .call()
    .unwrap()
    .save(png.clone(), Some("Trips".into()))
    .await
    .unwrap();
  assert!(saved.id.starts_with("trips:"));
  assert_eq!(
    store.call().unwrap().read(&saved.id).await.unwrap(),
    Some(png)
  );

  let updated = store
    .call()
    .unwrap()
    .update(&saved.id, jpeg.clone())
    .await
    .unwrap();
  assert!(updated.token > saved.token);
  assert_ne!(updated.key, saved.key);
  assert_eq!(
    store.call().unwrap().read(&saved.id).await.unwrap(),
    Some(jpeg)
  );
  assert_eq!(
    store.record(&saved.id).unwrap().unwrap().token,
    updated.token
  );
  assert_eq!(encrypted_files(&dir.path().join("images")).len(), 1);

  assert!(store.call().unwrap().delete(&saved.id).await.unwrap());
  assert!(!store.call().unwrap().delete(&saved.id).await.unwrap());
  assert_eq!(store.call().unwrap().read(&saved.id).await.unwrap(), None);
  assert!(encrypted_files(&dir.path().join("images")).is_empty());

  let missing = store
    .call()
    .unwrap()
    .update(&saved.id, asset("1-pixel.png"))
    .await
    .unwrap_err();
  assert_eq!(missing.kind(), ErrorKind::NotFound);
  assert_eq!(missing.message(), format!("Image not found: {}", saved.id));
  store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_get_distinct_increasing_tokens() {
  let dir = tempfile::tempdir().unwrap();
  let store = open(dir.path());
  let saved = store
    .call()
    .unwrap()
    .save(asset("1-pixel.png"), None)
    .await
    .unwrap();
  let inputs = [
    asset("1-pixel.png"),
    asset("1-pixel.webp"),
    asset("thumb-64.jpg"),
  ];

  let mut tasks = Vec::new();
  for i in 0..40 {
    let (store, id, image) = (store.clone(), saved.id.clone(), inputs[i % 3].clone());
    tasks.push(tokio::spawn(async move {
      store.call().unwrap().update(&id, image).await
    }));
  }
  let mut tokens = Vec::new();
  for task in tasks {
    tokens.push(task.await.unwrap().unwrap().token);
  }
  tokens.sort();
  tokens.dedup();
  assert_eq!(tokens.len(), 40);
  assert!(tokens[0] > saved.token);

  let last = store.record(&saved.id).unwrap().unwrap();
  assert_eq!(last.token, *tokens.last().unwrap());
  let image = store
    .call()
    .unwrap()
    .read(&saved.id)
    .await
    .unwrap()
    .unwrap();
  assert!(inputs.contains(&image));
  assert_eq!(encrypted_files(&dir.path().join("images")).len(), 1);
  store.close();
}

/// Runs a sweep as the store does, off the runtime's threads.
async fn sweep(store: &Arc<Store>) -> pixstore::core::store::SweepReport {
  let store = Arc::clone(store);
  tokio::task::spawn_blocking(move || store.sweep().unwrap())
    .await
    .unwrap()
}

/// Leaves what a writer killed by SIGKILL leaves: its lock file, unlocked, and its row in the
/// database.
fn leave_as_killed(dir: &Path, writer: &str) {
  let root = dir.join("images");
  std::fs::write(root.join(format!(".pixstore/writers/{writer}.lock")), b"").unwrap();
  let conn = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
  conn
    .execute(
      "INSERT OR REPLACE INTO pixstore_writers(id, opened_ms) VALUES (?1, 0)",
      [writer],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_dead_writers_orphans_and_spares_everything_else() {
  let dir = tempfile::tempdir().unwrap();
  let root = dir.path().join("images");
  let first = open(dir.path());
  let kept = first
    .call()
    .unwrap()
    .save(asset("1-pixel.png"), None)
    .await
    .unwrap();
  first.close();
  drop(first);

  // A file of a live writer that no record names yet, as mid-save: a copy of one of its files
  // under another key.
  let live = open(dir.path());
  let record = live
    .call()
    .unwrap()
    .save(asset("1-pixel.png"), Some("x".into()))
    .await
    .unwrap();
  let key = record.id.split_once(':').unwrap().1;
  let live_file = encrypted_files(&root.join("x")).pop().unwrap();
  let live_writer = live_file
    .split('.')
    .nth(1)
    .unwrap()
    .split('-')
    .next()
    .unwrap()
    .to_owned();
  let live_orphan = live_file.replacen(key, "k2", 1);
  std::fs::copy(root.join("x").join(&live_file), root.join(&live_orphan)).unwrap();

  // A file of a writer this database knows, which died mid-save.
  let dead_orphan = "k1.deadwriter-0.pixstore-image";
  std::fs::write(root.join(dead_orphan), b"partial").unwrap();
  leave_as_killed(dir.path(), "deadwriter");

  // Not crash leftovers of this database, so they stay: a dead writer it does not know (as
  // after a restore from a backup, or with a new databasePath), a writer that closed cleanly,
  // and a 3.x file without a record.
  std::fs::write(root.join(".pixstore/writers/otherwrite.lock"), b"").unwrap();
  let unowned = [
    "k5.otherwrite-0.pixstore-image",
    "k3.closedwrit-0.pixstore-image",
    "k4.pixstore-image",
  ];
  for name in unowned {
    std::fs::write(root.join(name), b"unknown").unwrap();
  }

  // Opening a store sweeps in the background; closing waits for the sweep.
  let second = open(dir.path());
  assert_eq!(
    second.call().unwrap().read(&kept.id).await.unwrap(),
    Some(asset("1-pixel.png"))
  );
  second.close();
  let files = encrypted_files(&root);
  assert!(!files.contains(&dead_orphan.to_string()));
  assert!(!root.join(".pixstore/writers/deadwriter.lock").exists());
  assert!(root.join(".pixstore/writers/otherwrite.lock").exists());
  assert!(files.contains(&live_orphan));
  assert_eq!(files.len(), 6, "{files:?}");

  let third = open(dir.path());
  let report = sweep(&third).await;
  assert_eq!(
    (
      report.removed,
      report.left_to_live_writers,
      report.left_unowned
    ),
    (0, 1, 3)
  );

  // The live writer is killed: now its orphan goes, and its committed file stays.
  live.close();
  drop(live);
  leave_as_killed(dir.path(), &live_writer);
  let report = sweep(&third).await;
  assert_eq!((report.removed, report.left_unowned), (1, 3));
  assert!(!root
    .join(format!(".pixstore/writers/{live_writer}.lock"))
    .exists());
  assert_eq!(
    third.call().unwrap().read(&record.id).await.unwrap(),
    Some(asset("1-pixel.png"))
  );
  third.close();
  assert_eq!(encrypted_files(&root).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_whose_removal_was_cut_short_is_removed_by_the_next_sweep() {
  let dir = tempfile::tempdir().unwrap();
  let root = dir.path().join("images");
  let store = open(dir.path());
  let call = store.call().unwrap();
  let saved = call.save(asset("1-pixel.png"), None).await.unwrap();
  let old_file = encrypted_files(&root).pop().unwrap();
  let old_bytes = std::fs::read(root.join(&old_file)).unwrap();
  call.update(&saved.id, asset("1-pixel.webp")).await.unwrap();
  drop(call);
  store.close();

  // As if the process died after the commit and before the unlink: the file is back, and so
  // is its trash row.
  std::fs::write(root.join(&old_file), old_bytes).unwrap();
  let version = old_file.split('.').nth(1).unwrap();
  rusqlite::Connection::open(dir.path().join("store.sqlite"))
    .unwrap()
    .execute(
      "INSERT INTO pixstore_trash(id, file_version) VALUES (?1, ?2)",
      [saved.id.as_str(), version],
    )
    .unwrap();

  let reopened = open(dir.path());
  reopened.close();
  assert_eq!(encrypted_files(&root).len(), 1);
  let left: i64 = rusqlite::Connection::open(dir.path().join("store.sqlite"))
    .unwrap()
    .query_row("SELECT count(*) FROM pixstore_trash", [], |row| row.get(0))
    .unwrap();
  assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_files_written_by_pixstore_3() {
  let dir = tempfile::tempdir().unwrap();
  let store = open(dir.path());
  let image = asset("vilnius-800.webp");

  // 3.x: `<root>/DIR/KEY.pixstore-image` and a record without a file version.
  let (ciphertext, meta) = crypto::seal(2, &image);
  std::fs::create_dir_all(dir.path().join("images/old")).unwrap();
  std::fs::write(
    dir.path().join("images/old/legacy1.pixstore-image"),
    ciphertext,
  )
  .unwrap();
  let conn = rusqlite::Connection::open(dir.path().join("store.sqlite")).unwrap();
  conn
    .execute(
      "INSERT INTO image_records(id, token, meta) VALUES ('old:legacy1', 5, ?1)",
      [meta.to_json()],
    )
    .unwrap();

  assert_eq!(
    store.call().unwrap().read("old:legacy1").await.unwrap(),
    Some(image)
  );
  let updated = store
    .call()
    .unwrap()
    .update("old:legacy1", asset("1-pixel.png"))
    .await
    .unwrap();
  assert!(updated.token > 5);
  assert!(!dir
    .path()
    .join("images/old/legacy1.pixstore-image")
    .exists());
  assert_eq!(
    store.call().unwrap().read("old:legacy1").await.unwrap(),
    Some(asset("1-pixel.png"))
  );
  store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_database_is_refused_and_left_unchanged() {
  let dir = tempfile::tempdir().unwrap();
  let db = dir.path().join("store.sqlite");
  let conn = rusqlite::Connection::open(&db).unwrap();
  conn
    .execute_batch("CREATE TABLE users(id INTEGER)")
    .unwrap();
  drop(conn);
  let before = std::fs::read(&db).unwrap();

  let config = Config::resolve(ConfigInput {
    image_root_dir: Some(dir.path().join("images").to_string_lossy().into_owned()),
    database_path: Some(db.to_string_lossy().into_owned()),
    ..Default::default()
  })
  .unwrap();
  let err = Store::open(config).err().unwrap();
  assert_eq!(err.kind(), ErrorKind::IncompatibleStore);
  assert!(err.message().contains("users"), "{}", err.message());
  assert_eq!(std::fs::read(&db).unwrap(), before);
}
