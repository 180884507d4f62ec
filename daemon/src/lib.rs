//! surpdb's core: the shared segment format, the request ring, the value codec, the client
//! read path and (with the `server` feature) the `surpd` daemon.
//!
//! File map (docs/DESIGN.md, "Code map", says who calls what): `layout` (every shared byte
//! of the three files, and their names), `shm` (the only unsafe code, allowed there alone:
//! mappings, futexes, processes), `segment` (the data file), `index` (key index), `heap`
//! (record log and eviction), `ring/` (request mailboxes: geometry, `producer`, `consumer`,
//! `hints`), `protocol` (typed requests, reply statuses, the one status -> error mapping),
//! `value` (value encoding), `zset` (sorted-set queries), `client` (read path, requests and
//! the ticket ledger), `apply` (the single writer's operations and journal), `update`
//! (atomic updates and sorted-set updates), `records` and `codec` (the record store and its
//! compression), `check` (offline verification), `server` (daemon loop), `stats`, `config`,
//! `crash` (test-only crash points), `log`, `error`.

#![deny(unsafe_code)]

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
pub mod protocol;
pub mod records;
pub mod ring;
pub mod segment;
#[cfg(feature = "server")]
pub mod server;
// The one module with unsafe code (mappings, atomics over shared bytes, futexes, processes).
#[allow(unsafe_code)]
pub mod shm;
pub mod stats;
pub mod update;
pub mod value;
pub mod zset;

pub use error::{Error, Result};
