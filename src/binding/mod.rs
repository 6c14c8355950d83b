//! The Node-API face of the core: converts JavaScript values to core types and back, and holds
//! the one store of the process. Argument types and error modes are the JavaScript layer's
//! (`lib/`); nothing here decides behaviour.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use napi::bindgen_prelude::{Buffer, Either, Error, Function, PromiseRaw, Result, ToNapiValue};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;
use napi_derive::napi;

use crate::core::store::Call;
use crate::core::{self, ConfigInput, Store};

/// The store of this process, shared by every import of the package.
static STORE: RwLock<Option<Arc<Store>>> = RwLock::new(None);

/// Stores replaced by a re-init, closing in the background; `close` waits for them too.
static RETIRED: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// A failure of the store, handed to the JavaScript layer as a value, which turns it into a
/// `PixstoreError` and applies the error mode. (An async napi function can only reject with a
/// Node-API status as `code`; a value carries our own codes.)
#[napi(object)]
pub struct Failure {
  /// The stable code, such as `'NOT_FOUND'`.
  pub code: String,
  pub message: String,
  /// What exactly went wrong, where the message keeps a fixed wording.
  pub detail: Option<String>,
}

fn settle<T>(result: core::Result<T>) -> Either<T, Failure> {
  match result {
    Ok(value) => Either::A(value),
    Err(err) => Either::B(Failure {
      code: err.kind().code().to_owned(),
      message: err.message().to_owned(),
      detail: err.detail().map(str::to_owned),
    }),
  }
}

fn current() -> core::Result<Arc<Store>> {
  STORE.read().expect("store lock").clone().ok_or_else(|| {
    core::Error::new(
      core::ErrorKind::NotInitialized,
      "Pixstore is not initialised: call initPixstoreBackend() before any other function",
    )
  })
}

/// Backend configuration. Every key is optional; a missing key takes its default.
#[napi(object)]
#[derive(Default)]
pub struct BackendConfig {
  /// Allowed image formats, recognised from content. The order fixes each format's byte in the
  /// encrypted file: 1 + its index. Default `['png', 'webp', 'jpg', 'jpeg']`.
  pub image_formats: Option<Vec<String>>,
  /// Folder of the encrypted files, relative to the working directory or absolute. Default
  /// `'pixstore-images'`.
  pub image_root_dir: Option<String>,
  /// SQLite database file. Default `'./.pixstore.sqlite'`.
  pub database_path: Option<String>,
  /// Lifetime window of stateless proofs in milliseconds, or `-1` for proofs that never expire.
  /// A proof of the current or the previous window is accepted. Default `20000`.
  pub stateless_key_window_length: Option<f64>,
  /// Whether the default HTTP endpoint is served. Default `true`.
  pub default_endpoint_enabled: Option<bool>,
  /// Route of the default endpoint. Default `'/pixstore-image'`.
  pub default_endpoint_route: Option<String>,
  /// Address the default endpoint listens on. Default `'0.0.0.0'`.
  pub default_endpoint_listen_host: Option<String>,
  /// Port of the default endpoint, 1 to 65535. Default `3001`.
  pub default_endpoint_listen_port: Option<f64>,
  /// `Access-Control-Allow-Origin` of the default endpoint. Default `'*'`.
  pub access_control_allow_origin: Option<String>,
  /// How failures are reported: `'hybrid'`, `'throw'`, `'warn'`, `'silent'` or `'custom'`.
  /// Default `'hybrid'`.
  pub error_handling_mode: Option<String>,
  /// 32 bytes (or their base64) that wrap every image key before it reaches SQLite. Default: the
  /// `PIXSTORE_MASTER_KEY` environment variable, if set; otherwise keys are stored as 3.x
  /// stores them.
  pub master_key: Option<Either<Buffer, String>>,
  /// Milliseconds a write waits for another process's lock on the database before failing with
  /// `DATABASE_BUSY`. Default `30000`.
  pub database_busy_timeout: Option<f64>,
}

fn secret(key: Either<Buffer, String>) -> core::config::SecretInput {
  match key {
    Either::A(bytes) => core::config::SecretInput::Bytes(bytes.to_vec()),
    Either::B(text) => core::config::SecretInput::Base64(text),
  }
}

/// What `init` settled on, for the JavaScript layer.
#[napi(object)]
pub struct InitResult {
  /// The error handling mode in force.
  pub error_handling_mode: String,
}

/// What decrypts an image: standard base64 with padding.
#[napi(object)]
pub struct ImageMeta {
  /// The 32-byte AES-256 key.
  pub key: String,
  /// The 12-byte GCM IV.
  pub iv: String,
  /// The 16-byte GCM tag.
  pub tag: String,
}

/// An image as callers see it.
#[napi(object)]
pub struct ImageRecord {
  /// `KEY` or `DIR:KEY`.
  pub id: String,
  /// Version of the image: a millisecond timestamp, larger after every write of this id.
  pub token: i64,
  /// Key, IV and tag of the encrypted file.
  pub meta: ImageMeta,
  /// Short-lived authorisation to fetch this image from an endpoint.
  pub stateless_proof: String,
}

impl From<core::ImageRecord> for ImageRecord {
  fn from(record: core::ImageRecord) -> Self {
    ImageRecord {
      id: record.id,
      token: record.token,
      meta: ImageMeta {
        key: record.key,
        iv: record.iv,
        tag: record.tag,
      },
      stateless_proof: record.stateless_proof,
    }
  }
}

/// Opens the store the configuration names, replacing any open one. The replaced store finishes
/// its calls in progress and closes in the background.
#[napi]
pub fn init(config: Option<BackendConfig>) -> Either<InitResult, Failure> {
  let config = config.unwrap_or_default();
  let input = ConfigInput {
    image_formats: config.image_formats,
    image_root_dir: config.image_root_dir,
    database_path: config.database_path,
    stateless_key_window_length: config.stateless_key_window_length,
    default_endpoint_enabled: config.default_endpoint_enabled,
    default_endpoint_route: config.default_endpoint_route,
    default_endpoint_listen_host: config.default_endpoint_listen_host,
    default_endpoint_listen_port: config.default_endpoint_listen_port,
    access_control_allow_origin: config.access_control_allow_origin,
    error_handling_mode: config.error_handling_mode,
    master_key: config.master_key.map(secret),
    database_busy_timeout: config.database_busy_timeout,
  };
  settle(core::Config::resolve(input).and_then(|config| {
    let mode = config.error_handling_mode.name().to_owned();
    let store = Store::open(config)?;
    let replaced = STORE.write().expect("store lock").replace(store);
    if let Some(old) = replaced {
      let closing = std::thread::spawn(move || old.close());
      RETIRED.lock().expect("retired lock").push(closing);
    }
    Ok(InitResult {
      error_handling_mode: mode,
    })
  }))
}

/// Waits for every call in progress, then closes the store, and waits for stores replaced by
/// earlier re-inits to close. Takes the store when called, so a re-init right after it is not
/// closed by it, and calls made after it fail with `NOT_INITIALIZED`.
#[napi(ts_return_type = "Promise<void>")]
pub fn close(env: &Env) -> Result<PromiseRaw<'_, ()>> {
  let store = STORE.write().expect("store lock").take();
  let retired = std::mem::take(&mut *RETIRED.lock().expect("retired lock"));
  env.spawn_future(async move {
    tokio::task::spawn_blocking(move || {
      if let Some(store) = store {
        store.close();
      }
      for closing in retired {
        let _ = closing.join();
      }
    })
    .await
    .map_err(|e| Error::from_reason(format!("Closing the store failed: {e}")))
  })
}

/// A caller's image bytes. On the main thread the store reads the caller's buffer itself, holding
/// a reference that keeps it alive. A worker thread's buffers are copied at call time: a
/// terminated worker frees its memory at once, while the store may still be reading it.
enum ImageBytes {
  Borrowed(Buffer),
  Copied(Vec<u8>),
}

impl AsRef<[u8]> for ImageBytes {
  fn as_ref(&self) -> &[u8] {
    match self {
      ImageBytes::Borrowed(buffer) => buffer,
      ImageBytes::Copied(bytes) => bytes,
    }
  }
}

fn image_bytes(image: Buffer, main_thread: bool) -> ImageBytes {
  if main_thread {
    ImageBytes::Borrowed(image)
  } else {
    ImageBytes::Copied(image.to_vec())
  }
}

/// Starts a call on the open store now, on the JavaScript thread, and runs the rest on the
/// runtime. Starting it first means that a close or re-init made after this call waits for it
/// instead of overtaking it.
fn spawn<T, Fut>(
  env: &Env,
  work: impl FnOnce(core::Result<Call>) -> Fut,
) -> Result<PromiseRaw<'_, Either<T, Failure>>>
where
  T: ToNapiValue + Send + 'static,
  Fut: Future<Output = core::Result<T>> + Send + 'static,
{
  let pending = work(current().and_then(|store| store.call()));
  env.spawn_future(async move { Ok(settle(pending.await)) })
}

#[napi(ts_return_type = "Promise<ImageRecord | Failure>")]
pub fn save_image(
  env: &Env,
  image: Buffer,
  dir: Option<String>,
  main_thread: bool,
) -> Result<PromiseRaw<'_, Either<ImageRecord, Failure>>> {
  let image = image_bytes(image, main_thread);
  spawn(env, |call| async move {
    call?.save(image, dir).await.map(Into::into)
  })
}

#[napi(ts_return_type = "Promise<ImageRecord | Failure>")]
pub fn save_image_from_file(
  env: &Env,
  path: String,
  dir: Option<String>,
) -> Result<PromiseRaw<'_, Either<ImageRecord, Failure>>> {
  spawn(env, |call| async move {
    call?.save_from_file(path, dir).await.map(Into::into)
  })
}

#[napi(ts_return_type = "Promise<ImageRecord | Failure>")]
pub fn update_image(
  env: &Env,
  id: String,
  image: Buffer,
  main_thread: bool,
) -> Result<PromiseRaw<'_, Either<ImageRecord, Failure>>> {
  let image = image_bytes(image, main_thread);
  spawn(env, |call| async move {
    call?.update(&id, image).await.map(Into::into)
  })
}

#[napi(ts_return_type = "Promise<ImageRecord | Failure>")]
pub fn update_image_from_file(
  env: &Env,
  id: String,
  path: String,
) -> Result<PromiseRaw<'_, Either<ImageRecord, Failure>>> {
  spawn(env, |call| async move {
    call?.update_from_file(&id, path).await.map(Into::into)
  })
}

#[napi(ts_return_type = "Promise<boolean | Failure>")]
pub fn delete_image(env: &Env, id: String) -> Result<PromiseRaw<'_, Either<bool, Failure>>> {
  spawn(env, |call| async move { call?.delete(&id).await })
}

/// Whether an image exists. Synchronous: one indexed lookup (the JavaScript layer still answers
/// with a promise, as 3.x did).
#[napi]
pub fn image_exists(id: String) -> Either<bool, Failure> {
  settle(current().and_then(|store| store.exists(&id)))
}

#[napi(ts_return_type = "Promise<Buffer | null | Failure>")]
pub fn read_image(
  env: &Env,
  id: String,
) -> Result<PromiseRaw<'_, Either<Option<Buffer>, Failure>>> {
  spawn(env, |call| async move {
    Ok(call?.read(&id).await?.map(Buffer::from))
  })
}

#[napi]
pub fn get_image_record(id: String) -> Either<Option<ImageRecord>, Failure> {
  settle(
    current()
      .and_then(|store| store.record(&id))
      .map(|r| r.map(Into::into)),
  )
}

/// What `downgradeToLegacyNames` did.
#[napi(object)]
pub struct DowngradeReport {
  /// Files that now have 3.x's name.
  pub renamed: u32,
  /// Records left as they were: `[id, reason]`.
  pub failed: Vec<Vec<String>>,
}

/// Gives every file of the open store 3.x's name, for going back to pixstore 3.x.
#[napi(ts_return_type = "Promise<DowngradeReport | Failure>")]
pub fn downgrade_to_legacy_names(
  env: &Env,
) -> Result<PromiseRaw<'_, Either<DowngradeReport, Failure>>> {
  spawn(env, |call| async move {
    let report = call?.downgrade_to_legacy_names().await?;
    Ok(DowngradeReport {
      renamed: report.renamed as u32,
      failed: report
        .failed
        .into_iter()
        .map(|(id, why)| vec![id, why])
        .collect(),
    })
  })
}

/// The wire payload for one request, for an app's own route.
#[napi(ts_return_type = "Promise<Buffer | Failure>")]
pub fn custom_endpoint_helper(
  env: &Env,
  id: String,
  client_token: Option<i64>,
  proof: Option<String>,
) -> Result<PromiseRaw<'_, Either<Buffer, Failure>>> {
  spawn(env, |call| async move {
    let payload = call?.custom_payload(id, client_token, proof).await?;
    Ok(Buffer::from(payload))
  })
}

/// Stops the default endpoint of the store open when called, once its responses in flight are
/// sent.
#[napi(ts_return_type = "Promise<void | Failure>")]
pub fn stop_default_endpoint(env: &Env) -> Result<PromiseRaw<'_, Either<(), Failure>>> {
  spawn(env, |call| async move {
    let call = call?;
    call.stop_endpoint().await
  })
}

/// Re-wraps every image key of the open store under `newKey` (`null`: stores them plain), in
/// batches, while the store serves. Resolves with how many keys were re-wrapped.
#[napi(ts_return_type = "Promise<number | Failure>")]
pub fn rotate_master_key(
  env: &Env,
  new_key: Option<Either<Buffer, String>>,
) -> Result<PromiseRaw<'_, Either<u32, Failure>>> {
  let new_key = new_key.map(secret);
  spawn(env, |call| {
    let rotation = call.map(|call| call.rotate_master_key(new_key));
    async move { Ok(rotation?.await? as u32) }
  })
}

/// Progress of `verifyStore`.
#[napi(object)]
pub struct VerifyProgress {
  /// Records checked so far.
  pub checked: u32,
  /// Records in the store when the check began.
  pub total: u32,
}

/// What `verifyStore` found.
#[napi(object)]
pub struct VerifyReport {
  /// Whether every record's file decrypts, the database is sound and no orphan is left.
  pub healthy: bool,
  /// Records checked.
  pub records: u32,
  /// Records whose file decrypts under their key.
  pub intact: u32,
  /// Records whose file is missing: `{ id, path }`.
  pub missing: Vec<MissingFile>,
  /// Records whose file does not decrypt, or whose key cannot be read: `{ id, reason }`.
  pub damaged: Vec<DamagedRecord>,
  /// Paths of files no record names.
  pub orphans: Vec<String>,
  /// Orphans removed (with `repair`).
  pub removed: u32,
  /// Orphans `repair` could not remove: `{ path, reason }`.
  pub not_removed: Vec<UnremovedFile>,
  /// What SQLite's quick check reported; empty when the database is sound.
  pub database_problems: Vec<String>,
}

/// An orphan that could not be removed.
#[napi(object)]
pub struct UnremovedFile {
  pub path: String,
  /// The error, with the path.
  pub reason: String,
}

/// A record whose file is missing.
#[napi(object)]
pub struct MissingFile {
  pub id: String,
  pub path: String,
}

/// A record whose file or key is damaged.
#[napi(object)]
pub struct DamagedRecord {
  pub id: String,
  pub reason: String,
}

/// Checks every record's file and the database, and lists files no record names; with
/// `repair`, removes those. `onProgress` is called as records are checked.
#[napi(
  ts_args_type = "repair: boolean, onProgress?: (progress: VerifyProgress) => void",
  ts_return_type = "Promise<VerifyReport | Failure>"
)]
pub fn verify_store<'env>(
  env: &'env Env,
  repair: bool,
  on_progress: Option<Function<'_, VerifyProgress, ()>>,
) -> Result<PromiseRaw<'env, Either<VerifyReport, Failure>>> {
  let progress = on_progress
    .map(|f| {
      f.build_threadsafe_function::<VerifyProgress>()
        .callee_handled::<false>()
        .build()
    })
    .transpose()?;
  spawn(env, |call| async move {
    let report = call?
      .verify(repair, move |checked, total| {
        if let Some(progress) = &progress {
          progress.call(
            VerifyProgress {
              checked: checked as u32,
              total: total as u32,
            },
            ThreadsafeFunctionCallMode::NonBlocking,
          );
        }
      })
      .await?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    Ok(VerifyReport {
      healthy: report.healthy(),
      records: report.records as u32,
      intact: report.intact as u32,
      missing: report
        .missing
        .into_iter()
        .map(|(id, p)| MissingFile { id, path: path(p) })
        .collect(),
      damaged: report
        .damaged
        .into_iter()
        .map(|(id, reason)| DamagedRecord { id, reason })
        .collect(),
      orphans: report.orphans.into_iter().map(path).collect(),
      removed: report.removed as u32,
      not_removed: report
        .unremoved
        .into_iter()
        .map(|(p, reason)| UnremovedFile {
          path: path(p),
          reason,
        })
        .collect(),
      database_problems: report.database,
    })
  })
}
