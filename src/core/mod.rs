//! The store itself, free of any Node-API type, so that Rust tests and benchmarks drive it
//! directly.

pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod error;
pub mod files;
pub mod formats;
pub mod ids;
pub mod keys;
pub mod proofs;
pub mod records;
pub mod store;
pub mod wire;

pub use config::{Config, ConfigInput, ErrorHandlingMode};
pub use error::{Error, ErrorKind, Result};
pub use ids::ImageId;
pub use store::{ImageRecord, Store};
