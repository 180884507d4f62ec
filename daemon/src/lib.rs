//! surpdb's core: the shared segment format, the request ring, the value codec, the client
//! read path and (with the `server` feature) the `surpd` daemon.
//!
//! File map: `layout` (every shared byte), `shm` (the only unsafe code: mappings, futexes,
//! processes), `segment` (the data file), `index` (key index), `heap` (record log and
//! eviction), `ring` (request mailboxes), `value` (value encoding), `client` (read path and
//! requests), `apply` (the single writer's operations), `server` (daemon loop), `stats`,
//! `config`, `error`.

pub mod apply;
pub mod check;
pub mod client;
pub mod codec;
pub mod config;
pub mod crash;
pub mod error;
pub mod heap;
pub mod index;
pub mod layout;
pub mod log;
pub mod records;
pub mod ring;
pub mod segment;
#[cfg(feature = "server")]
pub mod server;
pub mod shm;
pub mod stats;
pub mod update;
pub mod value;

pub use error::{Error, Result};
