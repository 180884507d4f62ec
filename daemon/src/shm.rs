//! Raw access to shared mappings. Together with nothing else, this module holds the crate's
//! `unsafe` code: the crate root denies `unsafe_code` and allows it in this module alone.
//!
//! Rules it enforces for the rest of the crate:
//! * every offset is bounds- and alignment-checked here, so a bad offset read from shared
//!   memory becomes `None` (a miss or `Corrupted` upstream), never an out-of-bounds access;
//! * structs handed out as references are [`Shared`]: `#[repr(C)]` and made only of atomics,
//!   so concurrent writes by another process are atomic stores, never torn Rust values;
//! * plain bytes (keys, values, requests) are copied out with `copy_nonoverlapping` and
//!   validated afterwards (length, checksum), or lent as a slice only while the record is
//!   immutable (published and pinned by the reader's epoch).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
use std::time::Duration;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::layout::{
    BoxCtl, ChunkCtl, Journal, NsEntry, PrefixTable, RecFileHeader, RecHeader, ReqHeader,
    ResultEntry, RingHeader, SegHeader,
};

/// Marker for types that may be viewed in shared memory by reference.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only atomics (or arrays/structs of them) and
/// have no invalid bit patterns, so that any bytes written by any process are a valid value
/// and every access is an atomic operation.
pub unsafe trait Shared {}
// SAFETY: all of these are #[repr(C)] structs of atomics (see layout.rs).
unsafe impl Shared for SegHeader {}
unsafe impl Shared for NsEntry {}
unsafe impl Shared for PrefixTable {}
unsafe impl Shared for RecHeader {}
unsafe impl Shared for RingHeader {}
unsafe impl Shared for BoxCtl {}
unsafe impl Shared for ResultEntry {}
unsafe impl Shared for Journal {}
unsafe impl Shared for ReqHeader {}
unsafe impl Shared for RecFileHeader {}
unsafe impl Shared for ChunkCtl {}
unsafe impl Shared for AtomicU64 {}
unsafe impl Shared for AtomicU32 {}
unsafe impl Shared for AtomicU8 {}

enum Map {
    Ro(#[allow(dead_code)] Mmap),
    Rw(MmapMut),
}

/// A shared file mapping, read-only (clients' data segment) or read-write. The mapping may
/// reserve more address space than the file holds (a segment that can grow): only the
/// first `valid` bytes, which lie inside the file, are ever touched (a page past the end of
/// a file is a SIGBUS), and `valid` moves up when the file has grown.
pub struct Region {
    map: Map,
    base: *mut u8,
    len: usize,
    valid: std::sync::atomic::AtomicU64,
}

// SAFETY: the mapping is plain memory shared with other processes anyway; all accesses go
// through atomics or bounds-checked copies, so sharing the handle between threads adds no
// hazard beyond what other processes already impose.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Map a whole file read-only.
    pub fn map_ro(file: &File) -> io::Result<Region> {
        Self::map_ro_reserving(file, 0)
    }

    /// Map a whole file read-write (MAP_SHARED).
    pub fn map_rw(file: &File) -> io::Result<Region> {
        Self::map_rw_reserving(file, 0)
    }

    /// Map a file read-only, reserving address space for it to grow to `reserve` bytes.
    pub fn map_ro_reserving(file: &File, reserve: u64) -> io::Result<Region> {
        let flen = file.metadata()?.len();
        let len = flen.max(reserve);
        // SAFETY: the file is shared with other processes by design; we never form non-atomic
        // references over its bytes except through the rules in the module doc. Pages past
        // the file's end are never touched (`valid` bounds every access).
        let m = unsafe { MmapOptions::new().len(len as usize).map(file)? };
        let base = m.as_ptr() as *mut u8;
        let len = m.len();
        Ok(Region { map: Map::Ro(m), base, len, valid: flen.into() })
    }

    /// Map a file read-write (MAP_SHARED), reserving address space to grow to `reserve`.
    pub fn map_rw_reserving(file: &File, reserve: u64) -> io::Result<Region> {
        let flen = file.metadata()?.len();
        let len = flen.max(reserve);
        // SAFETY: as in map_ro_reserving.
        let mut m = unsafe { MmapOptions::new().len(len as usize).map_mut(file)? };
        let base = m.as_mut_ptr();
        let len = m.len();
        Ok(Region { map: Map::Rw(m), base, len, valid: flen.into() })
    }

    /// Bytes that may be accessed (inside the file).
    pub fn len(&self) -> u64 {
        self.valid.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Address space reserved for the file.
    pub fn reserved(&self) -> u64 {
        self.len as u64
    }

    /// The file grew to `n` bytes (its blocks exist): accept accesses up to there (at most
    /// what was reserved). Returns the new valid length.
    pub fn grow_valid(&self, n: u64) -> u64 {
        let n = n.min(self.len as u64);
        self.valid.fetch_max(n, std::sync::atomic::Ordering::AcqRel).max(n)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn writable(&self) -> bool {
        matches!(self.map, Map::Rw(_))
    }

    #[inline]
    fn check(&self, off: u64, len: u64, align: u64) -> bool {
        let valid = self.valid.load(std::sync::atomic::Ordering::Relaxed);
        off.is_multiple_of(align) && off.checked_add(len).is_some_and(|end| end <= valid)
    }

    /// A reference to a shared struct at `off`, or None if out of bounds or misaligned.
    #[inline]
    pub fn at<T: Shared>(&self, off: u64) -> Option<&T> {
        if !self.check(off, std::mem::size_of::<T>() as u64, std::mem::align_of::<T>() as u64) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked above); T is Shared, so any bit pattern is
        // valid and all accesses are atomic. The mapping lives as long as &self.
        Some(unsafe { &*(self.base.add(off as usize) as *const T) })
    }

    /// Like [`Region::at`] for offsets this crate computed itself from validated geometry.
    /// Panics on a bad offset: that is a bug in surpd, not bad input.
    #[inline]
    pub fn get<T: Shared>(&self, off: u64) -> &T {
        match self.at(off) {
            Some(t) => t,
            None => panic!("internal offset {off} outside a {}-byte mapping", self.len()),
        }
    }

    /// Copy `dst.len()` bytes from `off` into `dst`. False if out of bounds.
    #[inline]
    pub fn read(&self, off: u64, dst: &mut [u8]) -> bool {
        if !self.check(off, dst.len() as u64, 1) {
            return false;
        }
        // SAFETY: bounds checked; dst is a distinct local buffer. The source bytes may be
        // concurrently rewritten only if the epoch protocol was violated; the caller validates
        // the copy (checksum) before trusting it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(off as usize), dst.as_mut_ptr(), dst.len())
        };
        true
    }

    /// Borrow `len` bytes at `off`. Only for bytes that are immutable for the borrow's
    /// lifetime: a published record pinned by the caller's reader epoch or view.
    #[inline]
    pub fn slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        if !self.check(off, len, 1) {
            return None;
        }
        // SAFETY: bounds checked; immutability is the caller's contract (see doc).
        Some(unsafe { std::slice::from_raw_parts(self.base.add(off as usize), len as usize) })
    }

    /// Raw pointer to `off` for zero-copy buffers exported to Python; None if out of bounds.
    pub fn ptr(&self, off: u64, len: u64) -> Option<*const u8> {
        if !self.check(off, len, 1) {
            return None;
        }
        // SAFETY: in bounds.
        Some(unsafe { self.base.add(off as usize) as *const u8 })
    }

    /// Write bytes at `off`. Only the single writer calls this, and only on space that no
    /// reader can see (unpublished, or reclaimed after every reader left).
    #[inline]
    pub fn write(&self, off: u64, src: &[u8]) {
        assert!(self.writable(), "write to a read-only mapping");
        assert!(self.check(off, src.len() as u64, 1), "write outside the mapping at {off}");
        // SAFETY: bounds checked, mapping writable, space private to the writer (see doc).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off as usize), src.len())
        };
    }

    /// Zero `len` bytes at `off` (same contract as [`Region::write`]).
    pub fn zero(&self, off: u64, len: u64) {
        assert!(self.writable(), "write to a read-only mapping");
        assert!(self.check(off, len, 1), "zero outside the mapping at {off}");
        // SAFETY: as in write.
        unsafe { std::ptr::write_bytes(self.base.add(off as usize), 0, len as usize) };
    }

    /// Flush the file's part of the mapping to the file (msync MS_SYNC).
    pub fn flush(&self) -> io::Result<()> {
        match &self.map {
            Map::Rw(m) => m.flush_range(0, self.len() as usize),
            Map::Ro(_) => Ok(()),
        }
    }

    /// Start writeback without waiting (msync MS_ASYNC).
    pub fn flush_async(&self) -> io::Result<()> {
        match &self.map {
            Map::Rw(m) => m.flush_async_range(0, self.len() as usize),
            Map::Ro(_) => Ok(()),
        }
    }
}

/// A value other threads read while it may be replaced: [`Swap::get`] is one Acquire load.
/// Replaced values are kept (not dropped) until the `Swap` itself is, so a reference from
/// `get` stays valid for as long as the `Swap` lives. For rarely replaced values only (a
/// client's ring endpoint): each replacement is kept.
pub struct Swap<T> {
    cur: std::sync::atomic::AtomicPtr<T>,
    all: std::sync::Mutex<Vec<Box<T>>>,
}

// SAFETY: a Swap hands out &T to any thread and moves T values in from any thread, which is
// what T: Send + Sync allows.
unsafe impl<T: Send + Sync> Send for Swap<T> {}
unsafe impl<T: Send + Sync> Sync for Swap<T> {}

impl<T> Swap<T> {
    pub fn new(v: T) -> Swap<T> {
        let b = Box::new(v);
        let p = &*b as *const T as *mut T;
        Swap { cur: std::sync::atomic::AtomicPtr::new(p), all: std::sync::Mutex::new(vec![b]) }
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> &T {
        // SAFETY: `cur` always points into a Box held by `all`, which is only ever pushed
        // to (never popped or cleared) until self is dropped; the Box's heap allocation does
        // not move when the Vec reallocates. The Acquire load pairs with the Release store
        // in `set`, so the value is fully initialised.
        unsafe { &*self.cur.load(std::sync::atomic::Ordering::Acquire) }
    }

    /// Make `v` the current value (the old one stays alive). Returns the new current value.
    pub fn set(&self, v: T) -> &T {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let b = Box::new(v);
        let p = &*b as *const T as *mut T;
        all.push(b);
        self.cur.store(p, std::sync::atomic::Ordering::Release);
        // SAFETY: as in get: the Box now lives in `all` until self is dropped.
        unsafe { &*p }
    }

    /// Run `f` over every value ever set, oldest first (the current one last).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        for b in all.iter() {
            f(b);
        }
    }
}

/// Sleep while `word == expected`, at most `timeout`. Shared futex (no FUTEX_PRIVATE_FLAG):
/// the word lives in a MAP_SHARED file mapping and other processes wake us.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: word is a valid, aligned u32 in a shared mapping that outlives the call; the
    // kernel only reads it. Spurious wake-ups and EAGAIN/EINTR/ETIMEDOUT are all handled by
    // callers re-checking their condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32 as *const u32,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wake up to `n` waiters on `word` in any process.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: as in futex_wait; FUTEX_WAKE does not dereference beyond the word's address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU32 as *const u32,
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Whether process `pid` exists and started at `start` (clock ticks since boot; 0 = unknown,
/// then existence alone decides). A recycled pid with another start time is not alive, nor
/// is a zombie (it has exited; only its parent has not collected it yet).
pub fn process_alive(pid: u32, start: u64) -> bool {
    // Past Linux's largest pid (2^22) it names no process; and as a negative pid_t, kill()
    // would check a process group (-1: every process) and call the word alive: garbage
    // owner words such as 0xfffffffe held a ring box forever.
    if pid == 0 || pid > 1 << 22 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match process_stat(pid) {
        Some(('Z' | 'X' | 'x', _)) => false,
        Some((_, s)) => start == 0 || s == start,
        None => true, // /proc unavailable: trust kill()
    }
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat field 22).
pub fn process_start_time(pid: u32) -> Option<u64> {
    process_stat(pid).map(|(_, start)| start)
}

/// A process's state letter and start time (/proc/PID/stat fields 3 and 22).
fn process_stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    // rest starts with " S ..." : field 3 is index 0 here, so field 22 is index 19.
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

/// This process's pid (a syscall: callers cache it).
pub fn getpid() -> u32 {
    std::process::id()
}

/// Take an exclusive, non-blocking flock on `file`. Ok(false) when another process holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid open descriptor.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Random 64-bit value from the kernel (getrandom), for hash seeds.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n != 8 {
        // Fall back to time and pid; the seed only needs to be unpredictable, not secret.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// Register a fork handler that runs in the child after fork(): `f` must be
/// async-signal-safe (the binding only bumps an atomic counter).
pub fn at_fork_child(f: extern "C" fn()) {
    // SAFETY: pthread_atfork with a valid function pointer and no prepare/parent handlers.
    unsafe {
        libc::pthread_atfork(None, None, Some(f));
    }
}

/// Current unix time in milliseconds (vDSO clock_gettime, no syscall).
#[inline]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Install `handler` for SIGTERM, SIGINT and SIGHUP (SA_RESTART off, so that a futex
/// sleep returns and the loop sees the flag the handler sets).
pub fn install_signal_handler(handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Write all of `bytes` to a raw descriptor and close it (the readiness pipe).
pub fn write_and_close_fd(fd: i32, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor was handed to us for this purpose (--ready-fd); we take
    // ownership and close it when the File drops.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)
}

/// Take ownership of a descriptor handed to this process by number (`--parent-fd`).
pub fn take_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor was handed to us for this purpose and nothing else in the
    // process uses it; it is closed when the OwnedFd drops.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Whether the other end of a pipe (whose read end is `fd`) has been closed by every
/// process that held it: the read end then polls as hung up (or readable, at EOF). Never
/// blocks.
pub fn hung_up(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid pollfd, with no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLIN | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Give `file` real blocks for `[off, off + len)` (posix_fallocate), so that a later store
/// through a mapping of that range cannot fault with SIGBUS on a full filesystem: the
/// failure comes here, as an error, instead. Where the filesystem cannot preallocate,
/// glibc writes zeros, which allocates the same blocks.
pub fn allocate(file: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate on a valid open descriptor; it returns the error number
    // instead of setting errno.
    let r =
        unsafe { libc::posix_fallocate(file.as_raw_fd(), off as libc::off_t, len as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Free and total bytes of the filesystem holding `path` (statvfs), for error messages.
pub fn fs_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; c is a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// The error for a failed preallocation: names the file, the bytes wanted and the
/// filesystem's free space.
pub fn allocate_error(path: &std::path::Path, len: u64, e: io::Error) -> crate::error::Error {
    let space = path
        .parent()
        .and_then(fs_space)
        .map(|(free, total)| format!(" (the filesystem has {free} of {total} bytes free)"))
        .unwrap_or_default();
    crate::error::Error::io(
        format!("cannot allocate {len} bytes of disk for {}{space}", path.display()),
        e,
    )
}

/// A pipe whose write end survives exec (for a child's `--ready-fd`); the read end does not.
pub fn inheritable_pipe() -> io::Result<(File, File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors we then own; O_CLOEXEC is cleared on the write
    // end only, with fcntl on a descriptor we just created.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (r, w) = (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]));
        if libc::fcntl(fds[1], libc::F_SETFD, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((r, w))
    }
}

/// An eventfd: a counter other threads bump to wake one that waits in [`poll_readable`]
/// (the upstream thread, for new jobs).
pub struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd returns a new descriptor we own (or -1).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Wake the waiter (the count is kept until it is drained).
    pub fn signal(&self) {
        use std::os::fd::AsRawFd;
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to our descriptor; a full counter
        // (EAGAIN) means a wake-up is pending anyway.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Reset the count (after waking).
    pub fn drain(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer; EAGAIN when already 0.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }

    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// Wait until one of `fds` is readable (or has hung up / failed), at most `timeout`. Returns
/// one flag per descriptor; a negative descriptor is skipped. EINTR counts as a timeout.
pub fn poll_readable(fds: &[i32], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: p is a live, correctly sized array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0).collect())
}

/// Read what a socket has without waiting (recv with MSG_DONTWAIT): `WouldBlock` when it
/// has nothing, Ok(0) at its end. The socket itself stays blocking for writes.
pub fn recv_now(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into a live buffer we hold exclusively.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Send signal `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: kill has no memory effects in this process.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Group id of a group name (or a numeric gid given as text).
pub fn group_id(name: &str) -> crate::error::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(crate::error::Error::Config(format!("group {name:?} does not exist"))),
        Err(e) => Err(crate::error::Error::Config(format!("cannot look up group {name:?}: {e}"))),
    }
}

/// Name of a group id, if it has one.
pub fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name)
}

/// Name of a user id, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// A permission error that names the file, its owner, group and mode, and what to do.
pub fn permission_error(path: &std::path::Path, what: &str, e: io::Error) -> crate::error::Error {
    use std::os::unix::fs::MetadataExt;
    let describe = |p: &std::path::Path, m: std::fs::Metadata| {
        let group = group_name(m.gid()).unwrap_or_else(|| m.gid().to_string());
        let owner = user_name(m.uid()).unwrap_or_else(|| m.uid().to_string());
        format!(
            "{} is owned by {owner}:{group} with mode {:04o}; run as a member of group {group:?}",
            p.display(),
            m.mode() & 0o7777
        )
    };
    let detail = match (std::fs::metadata(path), path.parent()) {
        (Ok(m), _) => describe(path, m),
        (Err(_), Some(dir)) => match std::fs::metadata(dir) {
            Ok(m) => format!("cannot reach {}: {}", path.display(), describe(dir, m)),
            Err(_) => format!("{} (its directory is not accessible)", path.display()),
        },
        (Err(_), None) => path.display().to_string(),
    };
    crate::error::Error::io(format!("permission denied {what}: {detail}"), e)
}

/// CLOCK_MONOTONIC (what systemd's MONOTONIC_USEC is measured in).
pub fn clock_monotonic(ts: &mut libc::timespec) {
    // SAFETY: ts is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, ts);
    }
}

/// The kernel's boot id as two u64 (0, 0 if unavailable).
pub fn boot_id() -> [u64; 2] {
    let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else { return [0, 0] };
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    let a = u64::from_str_radix(hex.get(0..16).unwrap_or("0"), 16).unwrap_or(0);
    let b = u64::from_str_radix(hex.get(16..32).unwrap_or("0"), 16).unwrap_or(0);
    [a, b]
}

/// A shared file being created: made under `<name>.surp.tmp`, sized (sparse) and mapped;
/// [`NewFile::install`] renames it into place once its header is written (magic last), so no
/// process ever maps a half-initialised file.
pub struct NewFile {
    pub region: Region,
    file: File,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl NewFile {
    pub fn create(path: &std::path::Path, mode: u32, len: u64) -> crate::error::Result<NewFile> {
        use crate::error::Error;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let tmp = path.with_extension("surp.tmp");
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
        // open() applies the umask; set the mode explicitly (group members may need to write).
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("cannot set the mode of {}", tmp.display()), e))?;
        file.set_len(len).map_err(|e| Error::io(format!("cannot size {}", tmp.display()), e))?;
        let region = Region::map_rw(&file)
            .map_err(|e| Error::io(format!("cannot map {}", tmp.display()), e))?;
        Ok(NewFile { region, file, tmp, path: path.to_path_buf() })
    }

    /// Allocate disk blocks for `[off, off + len)` of the new file (see [`allocate`]).
    pub fn allocate(&self, off: u64, len: u64) -> crate::error::Result<()> {
        allocate(&self.file, off, len).map_err(|e| allocate_error(&self.path, len, e))
    }

    /// Rename into place; with `durable`, flush the mapping and fsync the file first.
    pub fn install(self, durable: bool) -> crate::error::Result<()> {
        use crate::error::Error;
        let NewFile { region, file, tmp, path } = self;
        if durable {
            region.flush().map_err(|e| Error::io(format!("cannot flush {}", tmp.display()), e))?;
        }
        drop(region);
        if durable {
            file.sync_all().map_err(|e| Error::io(format!("cannot sync {}", tmp.display()), e))?;
        }
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("cannot rename {} into place", tmp.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let f = tempfile_with(4096);
        let r = Region::map_rw(&f).unwrap();
        assert!(r.at::<AtomicU64>(4088).is_some());
        assert!(r.at::<AtomicU64>(4089).is_none(), "misaligned");
        assert!(r.at::<AtomicU64>(4096).is_none(), "past the end");
        assert!(r.at::<AtomicU64>(u64::MAX - 3).is_none(), "overflow");
        let mut buf = [0u8; 16];
        assert!(r.read(4080, &mut buf));
        assert!(!r.read(4081, &mut buf));
        assert!(r.slice(0, 4097).is_none());
    }

    #[test]
    fn own_process_is_alive() {
        let pid = getpid();
        let start = process_start_time(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1), "other start time means recycled pid");
        assert!(!process_alive(0, 0));
        // A word that, as a pid_t, is minus this process's group: kill() would check the
        // group (alive) and /proc has no such pid. Before: alive.
        // SAFETY: getpgrp has no preconditions.
        let group = unsafe { libc::getpgrp() };
        assert!(!process_alive((-group) as u32, 0));
        assert!(!process_alive(u32::MAX, 0), "kill(-1) is every process");
    }

    pub(crate) fn tempfile_with(len: u64) -> File {
        let p = std::env::temp_dir().join(format!("surpd-shm-test-{}-{}", getpid(), random_u64()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f.set_len(len).unwrap();
        f
    }
}
