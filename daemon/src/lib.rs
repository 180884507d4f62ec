//! surpdb's core: the shared segment format, the request ring, the value codec, the client
//! read path and (with the `server` feature) the `surpd` daemon.
//!
//! File map (docs/DESIGN.md, "Code map", says who calls what): `layout` (every shared byte
//! of the three files, and their names), `shm` (the only unsafe code, allowed there alone:
//! mappings, futexes, processes), `segment` (the data file), `index` (key index), `heap`
//! (record log and eviction), `ring/` (request mailboxes: geometry, `producer`, `consumer`,
//! `hints`), `protocol` (typed requests, reply statuses, the one status -> error mapping),
//! `value` (value encoding), `namespace` (keys of a namespace, its table entry and the
//! writer's counts), `zset` (sorted-set queries), `client/` (connect, read path,
//! write path and the ticket ledger), `apply/` (the single writer: dispatch, cache ops,
//! record ops, journal and recovery, tiered mode's local half), `upstream` and `tier`
//! (tiered mode: the Redis/Valkey connection thread, the value mapping), `update`
//! (atomic updates and sorted-set updates), `records/` and `codec` (the record store and its
//! compression), `check` (offline verification), `server` (daemon loop), `stats`, `config`,
//! `crash` (test-only crash points), `log`, `error`.

#![deny(unsafe_code)]

// Every shared file is little-endian and read through atomics at fixed offsets: a
// big-endian build would read every word byte-swapped.
#[cfg(not(target_endian = "little"))]
compile_error!("surpd's shared files are little-endian; big-endian targets are not supported");

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
pub mod namespace;
pub mod prefix;
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
pub mod tags;
pub mod tier;
pub mod update;
#[cfg(feature = "server")]
pub mod upstream;
pub mod value;
pub mod zset;

pub use error::{Error, Result};
