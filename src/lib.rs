//! Pixstore: an encrypted image store for Node.js servers.
//!
//! [`core`] holds the whole store and knows nothing of Node; [`binding`] converts between
//! JavaScript values and core types and does nothing else.

pub mod binding;
pub mod core;
