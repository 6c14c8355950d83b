//! The backend configuration: pixstore 3.x's keys, defaults and rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::error::{quote, Error, ErrorKind, Result};
use super::formats::FormatList;
use super::keys::MasterKey;
use super::proofs::Window;
use zeroize::Zeroize;

/// How public functions report failures. The JavaScript layer applies it; the core only checks
/// the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorHandlingMode {
  Hybrid,
  Throw,
  Warn,
  Silent,
  Custom,
}

impl ErrorHandlingMode {
  const ALL: [(&'static str, ErrorHandlingMode); 5] = [
    ("hybrid", ErrorHandlingMode::Hybrid),
    ("throw", ErrorHandlingMode::Throw),
    ("warn", ErrorHandlingMode::Warn),
    ("silent", ErrorHandlingMode::Silent),
    ("custom", ErrorHandlingMode::Custom),
  ];

  pub fn name(self) -> &'static str {
    Self::ALL
      .iter()
      .find(|(_, mode)| *mode == self)
      .map(|(name, _)| *name)
      .expect("every mode has a name")
  }
}

/// A configuration as a caller gives it: every key optional, unchecked.
#[derive(Clone, Debug, Default)]
pub struct ConfigInput {
  pub image_formats: Option<Vec<String>>,
  pub image_root_dir: Option<String>,
  pub database_path: Option<String>,
  pub stateless_key_window_length: Option<f64>,
  pub default_endpoint_enabled: Option<bool>,
  pub default_endpoint_route: Option<String>,
  pub default_endpoint_listen_host: Option<String>,
  pub default_endpoint_listen_port: Option<f64>,
  pub access_control_allow_origin: Option<String>,
  pub error_handling_mode: Option<String>,
  pub master_key: Option<SecretInput>,
  pub database_busy_timeout: Option<f64>,
}

/// A number as JavaScript prints it, for messages about the values callers gave.
fn js_number(value: f64) -> String {
  match value {
    f64::INFINITY => "Infinity".into(),
    f64::NEG_INFINITY => "-Infinity".into(),
    v if v.is_nan() => "NaN".into(),
    v => v.to_string(),
  }
}

/// A master key as a caller gives it.
#[derive(Clone)]
pub enum SecretInput {
  Bytes(Vec<u8>),
  /// Standard base64 of the bytes.
  Base64(String),
}

// Key material never reaches a log through `{:?}`.
impl std::fmt::Debug for SecretInput {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("SecretInput(..)")
  }
}

// Zeroed when dropped, as `MasterKey` is.
impl Drop for SecretInput {
  fn drop(&mut self) {
    match self {
      SecretInput::Bytes(bytes) => bytes.zeroize(),
      SecretInput::Base64(text) => text.zeroize(),
    }
  }
}

impl SecretInput {
  /// The master key these bytes make, or an error of `kind` naming `source`.
  pub fn to_key(&self, source: &str, kind: ErrorKind) -> Result<MasterKey> {
    match self {
      SecretInput::Bytes(bytes) => MasterKey::from_bytes(bytes, source, kind),
      SecretInput::Base64(text) => MasterKey::from_base64(text, source, kind),
    }
  }
}

/// The environment variable a deployment can give the master key in, as base64.
pub const MASTER_KEY_ENV: &str = "PIXSTORE_MASTER_KEY";

/// A checked configuration, with paths made absolute against the working directory at init.
#[derive(Clone, Debug)]
pub struct Config {
  pub image_formats: FormatList,
  pub image_root: PathBuf,
  pub database_path: PathBuf,
  pub proof_window: Window,
  pub default_endpoint_enabled: bool,
  pub default_endpoint_route: String,
  pub default_endpoint_listen_host: String,
  pub default_endpoint_listen_port: u16,
  pub access_control_allow_origin: String,
  pub error_handling_mode: ErrorHandlingMode,
  /// Wraps every image key before it reaches SQLite, when given.
  pub master_key: Option<Arc<MasterKey>>,
  /// How long a write waits for another process's lock on the database.
  pub database_busy_timeout: Duration,
}

impl Config {
  /// Merges `input` over the defaults and checks every rule. The first broken rule is the error,
  /// naming the key, the value and what was expected.
  pub fn resolve(input: ConfigInput) -> Result<Config> {
    let cwd = std::env::current_dir().map_err(|e| {
      invalid(format!(
        "The working directory is unreadable ({e}), so relative paths cannot be resolved"
      ))
    })?;

    let image_formats = match input.image_formats {
      Some(names) => FormatList::new(names)?,
      None => FormatList::default(),
    };

    let image_root = input.image_root_dir.as_deref().unwrap_or("pixstore-images");
    if image_root.trim().is_empty() {
      return Err(invalid(format!(
        "Invalid imageRootDir {}: expected a folder path that is not empty or blank",
        quote(image_root)
      )));
    }
    let image_root = absolute(&cwd, checked_path("imageRootDir", image_root)?);

    let database_path = input
      .database_path
      .as_deref()
      .unwrap_or("./.pixstore.sqlite");
    if database_path.trim().is_empty() || database_path == ":memory:" {
      return Err(invalid(format!(
        "Invalid databasePath {}: expected the path of a SQLite file (in-memory databases \
         cannot be shared by the store's connections)",
        quote(database_path)
      )));
    }
    let database_path = absolute(&cwd, checked_path("databasePath", database_path)?);

    let proof_window = match input.stateless_key_window_length {
      None => Window::Millis(20_000),
      Some(-1.0) => Window::Never,
      Some(len) if len >= 1.0 && len.fract() == 0.0 && len <= 9_007_199_254_740_991.0 => {
        Window::Millis(len as u64)
      }
      Some(len) => {
        return Err(invalid(format!(
          "Invalid statelessKeyWindowLength {}: expected a positive whole number of \
           milliseconds, or -1 for proofs that never expire",
          js_number(len)
        )))
      }
    };

    let route = input
      .default_endpoint_route
      .unwrap_or_else(|| "/pixstore-image".into());
    if !route.starts_with('/') || route.chars().any(|c| c.is_whitespace() || "?#".contains(c)) {
      return Err(invalid(format!(
        "Invalid defaultEndpointRoute {}: expected a path that starts with / and holds no \
         space, ? or #",
        quote(&route)
      )));
    }

    let host = input
      .default_endpoint_listen_host
      .unwrap_or_else(|| "0.0.0.0".into());
    if host.trim().is_empty() {
      return Err(invalid(format!(
        "Invalid defaultEndpointListenHost {}: expected a host name or address",
        quote(&host)
      )));
    }

    let port = input.default_endpoint_listen_port.unwrap_or(3001.0);
    if !(1.0..=65535.0).contains(&port) || port.fract() != 0.0 {
      return Err(invalid(format!(
        "Invalid defaultEndpointListenPort {}: expected a whole number from 1 to 65535",
        js_number(port)
      )));
    }

    let origin = input
      .access_control_allow_origin
      .unwrap_or_else(|| "*".into());
    if origin.is_empty() || origin.chars().any(|c| c.is_control()) {
      return Err(invalid(format!(
        "Invalid accessControlAllowOrigin {}: expected \"*\" or an origin, without control \
         characters",
        quote(&origin)
      )));
    }

    let mode_name = input.error_handling_mode.as_deref().unwrap_or("hybrid");
    let error_handling_mode = ErrorHandlingMode::ALL
      .iter()
      .find(|(name, _)| *name == mode_name)
      .map(|(_, mode)| *mode)
      .ok_or_else(|| {
        invalid(format!(
          "Invalid errorHandlingMode {}: expected one of hybrid, throw, warn, silent, custom",
          quote(mode_name)
        ))
      })?;

    let master_key = match input.master_key {
      // `masterKey: null` (an empty string here): no master key, whatever the environment says.
      Some(SecretInput::Base64(ref text)) if text.is_empty() => None,
      Some(secret) => Some(secret.to_key("masterKey", ErrorKind::InvalidConfig)?),
      None => match std::env::var(MASTER_KEY_ENV) {
        Ok(text) if !text.is_empty() => Some(MasterKey::from_base64(
          &text,
          MASTER_KEY_ENV,
          ErrorKind::InvalidConfig,
        )?),
        _ => None,
      },
    };

    let busy = input.database_busy_timeout.unwrap_or(30_000.0);
    if !(0.0..=2_147_483_647.0).contains(&busy) || busy.fract() != 0.0 {
      return Err(invalid(format!(
        "Invalid databaseBusyTimeout {}: expected a whole number of milliseconds from 0 to \
         2147483647",
        js_number(busy)
      )));
    }

    Ok(Config {
      image_formats,
      image_root,
      database_path,
      proof_window,
      default_endpoint_enabled: input.default_endpoint_enabled.unwrap_or(true),
      default_endpoint_route: route,
      default_endpoint_listen_host: host,
      default_endpoint_listen_port: port as u16,
      access_control_allow_origin: origin,
      error_handling_mode,
      master_key: master_key.map(Arc::new),
      database_busy_timeout: Duration::from_millis(busy as u64),
    })
  }
}

fn invalid(message: String) -> Error {
  Error::new(ErrorKind::InvalidConfig, message)
}

fn checked_path<'a>(key: &str, path: &'a str) -> Result<&'a Path> {
  if path.contains('\0') {
    return Err(invalid(format!(
      "Invalid {key} {}: a path cannot hold a NUL character",
      quote(path)
    )));
  }
  Ok(Path::new(path))
}

fn absolute(cwd: &Path, path: &Path) -> PathBuf {
  if path.is_absolute() {
    path.to_path_buf()
  } else {
    cwd.join(path)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn defaults_are_the_documented_ones() {
    let config = Config::resolve(ConfigInput::default()).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(config.image_formats.names(), ["png", "webp", "jpg", "jpeg"]);
    assert_eq!(config.image_root, cwd.join("pixstore-images"));
    assert_eq!(config.database_path, cwd.join("./.pixstore.sqlite"));
    assert_eq!(config.proof_window, Window::Millis(20_000));
    assert!(config.default_endpoint_enabled);
    assert_eq!(config.default_endpoint_route, "/pixstore-image");
    assert_eq!(config.default_endpoint_listen_host, "0.0.0.0");
    assert_eq!(config.default_endpoint_listen_port, 3001);
    assert_eq!(config.access_control_allow_origin, "*");
    assert_eq!(config.error_handling_mode, ErrorHandlingMode::Hybrid);
  }

  #[test]
  fn every_rule_is_checked() {
    let cases: Vec<(ConfigInput, &str)> = vec![
      (
        ConfigInput {
          image_root_dir: Some("  ".into()),
          ..Default::default()
        },
        "imageRootDir",
      ),
      (
        ConfigInput {
          stateless_key_window_length: Some(0.0),
          ..Default::default()
        },
        "statelessKeyWindowLength",
      ),
      (
        ConfigInput {
          default_endpoint_listen_port: Some(65536.0),
          ..Default::default()
        },
        "defaultEndpointListenPort",
      ),
      (
        ConfigInput {
          error_handling_mode: Some("loud".into()),
          ..Default::default()
        },
        "errorHandlingMode",
      ),
      (
        ConfigInput {
          image_formats: Some(vec!["png".into(), "svg".into()]),
          ..Default::default()
        },
        "imageFormats[1]",
      ),
    ];
    for (input, key) in cases {
      let err = Config::resolve(input).unwrap_err();
      assert_eq!(err.kind(), ErrorKind::InvalidConfig);
      assert!(err.message().contains(key), "{}", err.message());
    }
  }

  #[test]
  fn never_expiring_window() {
    let config = Config::resolve(ConfigInput {
      stateless_key_window_length: Some(-1.0),
      ..Default::default()
    })
    .unwrap();
    assert_eq!(config.proof_window, Window::Never);
  }
}
