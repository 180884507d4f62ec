//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use surpd::client::{Client, Lookup};
use surpd::value;

/// A fresh directory under the system temp dir.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "surpd-test-{tag}-{}-{}",
        std::process::id(),
        surpd::shm::random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// xorshift64: deterministic test randomness without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The encoding of a bytes value.
pub fn bytes_value(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![value::BYTES];
    value::put_varint(&mut v, payload.len() as u64);
    v.extend_from_slice(payload);
    v
}

/// The encoding of a str value.
pub fn str_value(s: &str) -> Vec<u8> {
    let mut v = vec![value::STR];
    value::put_varint(&mut v, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
    v
}

/// The stored value bytes of `key`, read through the client's pinned read path.
pub fn get(c: &Client, key: &[u8]) -> Option<Vec<u8>> {
    let pin = c.pin().unwrap();
    match c.get(&pin, key) {
        Lookup::Hit(r) => Some(r.value.to_vec()),
        Lookup::Miss | Lookup::Unknown => None,
    }
}

/// A fresh directory on tmpfs when there is one (crash tests stop and start many daemons:
/// a clean stop msyncs the files, which costs nothing there), else the system temp dir.
pub fn shm_dir(tag: &str) -> PathBuf {
    let base = PathBuf::from("/dev/shm");
    let root = if base.is_dir() { base } else { std::env::temp_dir() };
    let d =
        root.join(format!("surpd-test-{tag}-{}-{}", std::process::id(), surpd::shm::random_u64()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A real `surpd` process (the binary of this package, built with the test-only crash
/// points) serving a directory. Its stderr goes to a file.
pub struct Surpd {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Surpd {
    /// A test that panics leaves no daemon behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Surpd {
    /// Start `surpd DIR ARGS...` with extra environment, and wait until it reports ready
    /// (through `--ready-fd`). Err(log) if it exited first; panics after 30 s.
    pub fn start(
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Surpd, String> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let log = dir.with_extension(format!("log{}", surpd::shm::random_u64() % 1_000_000));
        let (mut r, w) = surpd::shm::inheritable_pipe().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_surpd"));
        cmd.arg(dir).args(args).arg("--ready-fd").arg(w.as_raw_fd().to_string());
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        cmd.stderr(std::fs::File::create(&log).unwrap());
        cmd.env_remove("SURPD_TEST_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        drop(w);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if got.windows(7).any(|x| x == b"READY=1") {
                    break;
                }
            }
            let _ = tx.send(got.windows(7).any(|x| x == b"READY=1"));
        });
        let mut s = Surpd { child, log };
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(true) => Ok(s),
            Ok(false) => {
                let _ = s.child.wait();
                Err(s.log())
            }
            Err(_) => panic!("surpd did not become ready in 30 s: {}", s.log()),
        }
    }

    /// Whether the process has exited (reaping it).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// SIGTERM and wait: a clean stop. Returns the log.
    pub fn stop(mut self) -> String {
        if !self.exited() {
            surpd::shm::signal(self.child.id(), libc::SIGTERM).unwrap();
        }
        let st = self.child.wait().unwrap();
        let log = self.log();
        assert!(st.success() || st.code().is_none(), "surpd failed: {st}\n{log}");
        let _ = std::fs::remove_file(&self.log);
        log
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log();
        let _ = std::fs::remove_file(&self.log);
        log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
