//! The upstream connection: a socket (TCP, TLS over TCP, or Unix) that the upstream thread
//! writes commands to, waiting up to the timeout, and reads values from without ever
//! waiting, so that one thread can wait for new jobs and for the socket at once (`poll`)
//! and read a push the moment it arrives, not at its next command. Commands are packed and
//! values parsed by the redis crate (its parser resumes a value split across reads); only
//! the socket is ours.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

use crate::shm;

enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A socket whose reads never wait (recv with MSG_DONTWAIT: `WouldBlock` when empty) and
/// whose writes wait up to the socket's write timeout.
struct Sock {
    s: Plain,
    fd: i32,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        shm::recv_now(self.fd, buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.s {
            Plain::Tcp(t) => t.write(buf),
            Plain::Unix(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Stream {
    Plain(Sock),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Sock>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One connection to the upstream, after `HELLO 3` (and AUTH, SELECT).
pub struct Conn {
    stream: Stream,
    fd: i32,
    parser: redis::Parser,
    timeout: Duration,
}

fn err(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::IoError, what, detail))
}

fn tcp(host: &str, port: u16, timeout: Duration) -> RedisResult<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| err("cannot resolve", host.to_string()), RedisError::from))
}

impl Conn {
    /// Connect, handshake (TLS first for `rediss://`), `HELLO 3` with the credentials, and
    /// `SELECT` the database. Every step waits at most `timeout`.
    pub fn open(
        info: &ConnectionInfo,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> RedisResult<Conn> {
        let (plain, tls_host) = match &info.addr {
            ConnectionAddr::Tcp(h, p) => (Plain::Tcp(tcp(h, *p, timeout)?), None),
            ConnectionAddr::TcpTls { host, port, .. } => {
                (Plain::Tcp(tcp(host, *port, timeout)?), Some(host.clone()))
            }
            ConnectionAddr::Unix(path) => (Plain::Unix(UnixStream::connect(path)?), None),
        };
        let fd = match &plain {
            Plain::Tcp(t) => {
                t.set_write_timeout(Some(timeout))?;
                t.as_raw_fd()
            }
            Plain::Unix(u) => {
                u.set_write_timeout(Some(timeout))?;
                u.as_raw_fd()
            }
        };
        let sock = Sock { s: plain, fd };
        let stream = match tls_host {
            None => Stream::Plain(sock),
            Some(host) => Stream::Tls(Box::new(tls(sock, &host, ca_file, timeout)?)),
        };
        let mut c = Conn { stream, fd, parser: redis::Parser::new(), timeout };
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(pw) = &info.redis.password {
            hello.arg("AUTH").arg(info.redis.username.as_deref().unwrap_or("default")).arg(pw);
        }
        hello.arg("SETNAME").arg("surpd");
        c.call(&hello)?;
        if info.redis.db != 0 {
            c.call(redis::cmd("SELECT").arg(info.redis.db))?;
        }
        Ok(c)
    }

    /// The socket, for `poll`.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Send a command and wait for its reply: for setting up, before anything is cached
    /// (a push read meanwhile is dropped). A server error is an Err.
    pub fn call(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.send(&cmd.get_packed_command())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.read_value()? {
                Some(Value::Push { .. }) => continue,
                Some(Value::ServerError(e)) => return Err(e.into()),
                Some(v) => return Ok(v),
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RedisError::from(io::Error::from(io::ErrorKind::TimedOut)));
                    }
                    shm::poll_readable(&[self.fd], left)?;
                }
            }
        }
    }

    /// Write `bytes` whole (waiting up to the timeout for room in the socket).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next complete value, or None if the socket has none for now (the parser keeps
    /// what it has of a value split across reads). An Err means the connection is unusable.
    pub fn read_value(&mut self) -> RedisResult<Option<Value>> {
        match self.parser.parse_value(&mut self.stream) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// TLS over `sock`, verified against `ca_file`'s certificates, or the system's roots; the
/// handshake done here (waiting at most `timeout`).
fn tls(
    mut sock: Sock,
    host: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> RedisResult<rustls::StreamOwned<rustls::ClientConnection, Sock>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let certs = CertificateDer::pem_file_iter(p).map_err(|e| {
                err("cannot read upstream_ca_file", format!("{}: {e}", p.display()))
            })?;
            for c in certs {
                let c = c.map_err(|e| err("bad certificate", format!("{}: {e}", p.display())))?;
                roots
                    .add(c)
                    .map_err(|e| err("bad certificate", format!("{}: {e}", p.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| err("bad TLS server name", format!("{host}: {e}")))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)
        .map_err(|e| err("TLS", e.to_string()))?;
    let deadline = Instant::now() + timeout;
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(&mut sock)?;
            continue;
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => return Err(err("TLS handshake", "connection closed".into())),
            Ok(_) => {
                conn.process_new_packets().map_err(|e| err("TLS handshake", e.to_string()))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(err("TLS handshake", "timed out".into()));
                }
                shm::poll_readable(&[sock.fd], left)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}
