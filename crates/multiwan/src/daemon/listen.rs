//! A listener that cannot be exhausted, shared by the control socket and the metrics port.
//!
//! ```text
//!   accept thread (one per listener, poll(2)) ── complete request ──► worker thread (≤ max_active)
//!     holds up to max_pending connections that are still sending their request,
//!     each with a deadline and at most max_request bytes; beyond: the oldest goes
//! ```
//! A connection costs a thread only once its whole request has arrived, so idle or slow
//! clients hold a file descriptor and a small buffer, never a thread, and cannot keep a
//! prompt client out: the oldest pending connection makes room for a new one. Requests being
//! served are capped; beyond the cap the client gets an immediate refusal and is closed. Every
//! worker writes with a timeout, so a client that stops reading frees its thread.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// A connected client stream.
pub trait Stream: Read + Write + AsFd + Send + 'static {
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()>;
    /// Ends our side (FIN), so the answer is followed by an orderly end of stream.
    fn finish(&self) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn finish(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Stream for std::net::TcpStream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::net::TcpStream::set_nonblocking(self, on)
    }
    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn finish(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// A listening socket.
pub trait Listener: AsFd + Send + 'static {
    type Stream: Stream;
    fn accept_stream(&self) -> io::Result<Self::Stream>;
    fn set_nonblocking(&self) -> io::Result<()>;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn accept_stream(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        UnixListener::set_nonblocking(self, true)
    }
}

impl Listener for std::net::TcpListener {
    type Stream = std::net::TcpStream;
    fn accept_stream(&self) -> io::Result<std::net::TcpStream> {
        self.accept().map(|(s, _)| s)
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        std::net::TcpListener::set_nonblocking(self, true)
    }
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests served at once (threads).
    pub max_active: usize,
    /// Connections still sending their request.
    pub max_pending: usize,
    /// Longest request, its terminator included.
    pub max_request: usize,
    /// Time from connect to the end of the request.
    pub request_timeout: Duration,
    /// Longest a single write to the client may block.
    pub write_timeout: Duration,
}

/// Why a connection is closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    Timeout,
    /// `max_active` requests are being served.
    Busy,
    /// Pushed out of the pending set by a newer connection.
    Evicted,
}

/// What a listener speaks.
pub trait Protocol<S>: Send + Sync + 'static {
    /// Names the listener in logs and thread names.
    fn name(&self) -> &'static str;
    /// The length of the request when `buf` holds a whole one.
    fn complete(&self, buf: &[u8]) -> Option<usize>;
    /// The bytes sent to a refused client.
    fn refusal(&self, why: Refusal, limits: &Limits) -> Vec<u8>;
    /// Serves one request (in its own thread, blocking I/O with the write timeout set).
    fn serve(&self, stream: S, request: &[u8]);
}

/// At most one log line per `every`, counting what it swallowed.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events swallowed since the last line)` when a line may be logged now.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// How often refusals are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct Pending<S> {
    stream: S,
    buf: Vec<u8>,
    deadline: Instant,
}

/// Decrements the active count when a worker ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `listener` with `proto` under `limits`, from its own accept thread (returned, so
/// the daemon's supervisor notices if it ever ends).
pub fn spawn<L: Listener, P: Protocol<L::Stream>>(
    listener: L,
    limits: Limits,
    proto: Arc<P>,
) -> Result<std::thread::JoinHandle<()>> {
    listener
        .set_nonblocking()
        .context("making the listener non-blocking")?;
    let name = proto.name();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || Acceptor::new(limits, proto).run(&listener))
        .with_context(|| format!("starting the {name} thread"))
}

struct Acceptor<S, P> {
    limits: Limits,
    proto: Arc<P>,
    pending: VecDeque<Pending<S>>,
    active: Arc<AtomicUsize>,
    busy_log: RateLimit,
    evict_log: RateLimit,
}

impl<S: Stream, P: Protocol<S>> Acceptor<S, P> {
    fn new(limits: Limits, proto: Arc<P>) -> Self {
        Self {
            limits,
            proto,
            pending: VecDeque::new(),
            active: Arc::new(AtomicUsize::new(0)),
            busy_log: RateLimit::new(LOG_EVERY),
            evict_log: RateLimit::new(LOG_EVERY),
        }
    }

    fn run<L: Listener<Stream = S>>(mut self, listener: &L) {
        loop {
            let timeout = self.poll_timeout(Instant::now());
            let (listener_ready, ready) = {
                let mut fds = Vec::with_capacity(1 + self.pending.len());
                fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
                for p in &self.pending {
                    fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
                }
                if let Err(e) = nix::poll::poll(&mut fds, timeout) {
                    if e != nix::errno::Errno::EINTR {
                        tracing::error!(listener = self.proto.name(), error = %e, "poll failed; listener stops");
                        return;
                    }
                }
                let ready: Vec<bool> = fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                (ready[0], ready[1..].to_vec())
            };
            self.read_pending(&ready);
            self.expire(Instant::now());
            if listener_ready {
                self.accept_all(listener);
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        match self.pending.iter().map(|p| p.deadline).min() {
            None => PollTimeout::NONE,
            Some(d) => {
                // Rounded up so that a wake-up finds the deadline passed, not 0.4 ms ahead.
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
            }
        }
    }

    /// Reads what the ready pending connections sent; dispatches finished requests.
    fn read_pending(&mut self, ready: &[bool]) {
        let mut keep = VecDeque::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        for (mut p, ready) in pending
            .into_iter()
            .zip(ready.iter().copied().chain(std::iter::repeat(false)))
        {
            if !ready {
                keep.push_back(p);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let room = (self.limits.max_request + 1).saturating_sub(p.buf.len());
            let want = room.min(chunk.len());
            match p.stream.read(&mut chunk[..want]) {
                Ok(0) if p.buf.is_empty() => {} // connected and left: nothing to answer
                Ok(0) => {
                    // The client closed its side without a terminator: take what it sent.
                    let n = p.buf.len();
                    self.dispatch(p, n);
                }
                Ok(n) => {
                    p.buf.extend_from_slice(&chunk[..n]);
                    if let Some(len) = self.proto.complete(&p.buf) {
                        self.dispatch(p, len);
                    } else if p.buf.len() > self.limits.max_request {
                        self.refuse(p.stream, Refusal::TooLarge);
                    } else {
                        keep.push_back(p);
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    keep.push_back(p)
                }
                Err(_) => {} // reset by the client
            }
        }
        self.pending = keep;
    }

    fn expire(&mut self, now: Instant) {
        while let Some(i) = self.pending.iter().position(|p| p.deadline <= now) {
            if let Some(p) = self.pending.remove(i) {
                self.refuse(p.stream, Refusal::Timeout);
            }
        }
    }

    fn accept_all<L: Listener<Stream = S>>(&mut self, listener: &L) {
        // Bounded, so a flood of connects cannot keep this thread from reading requests.
        for _ in 0..self.limits.max_pending {
            let stream = match listener.accept_stream() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: give the system a moment instead of spinning.
                    tracing::warn!(listener = self.proto.name(), error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.pending.len() >= self.limits.max_pending {
                if let Some(old) = self.pending.pop_front() {
                    if let Some(n) = self.evict_log.hit(Instant::now()) {
                        tracing::warn!(
                            listener = self.proto.name(),
                            limit = self.limits.max_pending,
                            also_since_last_line = n,
                            "too many connections without a request: closed the oldest"
                        );
                    }
                    self.refuse(old.stream, Refusal::Evicted);
                }
            }
            self.pending.push_back(Pending {
                stream,
                buf: Vec::new(),
                deadline: Instant::now() + self.limits.request_timeout,
            });
        }
    }

    /// Best effort: the socket is non-blocking and its send buffer empty, so a short
    /// refusal fits; a client that cannot take it gets the close alone. (A TCP client whose
    /// unread request is still arriving may see a reset after the answer: the kernel's rule
    /// for closing with unread data. Lingering to drain it would let the client hold us.)
    fn refuse(&self, mut stream: S, why: Refusal) {
        let _ = stream.write_all(&self.proto.refusal(why, &self.limits));
        let _ = stream.finish();
        tracing::debug!(listener = self.proto.name(), ?why, "connection refused");
    }

    fn dispatch(&mut self, p: Pending<S>, len: usize) {
        if self.active.load(Ordering::Acquire) >= self.limits.max_active {
            if let Some(n) = self.busy_log.hit(Instant::now()) {
                tracing::warn!(
                    listener = self.proto.name(),
                    limit = self.limits.max_active,
                    also_since_last_line = n,
                    "too many requests in progress: refused one"
                );
            }
            self.refuse(p.stream, Refusal::Busy);
            return;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.active.clone());
        let proto = self.proto.clone();
        let limits = self.limits;
        let worker = std::thread::Builder::new()
            .name(format!("{}-conn", self.proto.name()))
            .spawn(move || {
                let _slot = slot;
                let Pending {
                    stream, mut buf, ..
                } = p;
                buf.truncate(len);
                let ready = stream.set_nonblocking(false).and_then(|()| {
                    stream.set_timeouts(limits.request_timeout, limits.write_timeout)
                });
                if ready.is_ok() {
                    proto.serve(stream, &buf);
                }
            });
        if let Err(e) = worker {
            tracing::warn!(listener = self.proto.name(), error = %e, "cannot start a worker thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_logs_once_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert_eq!(r.hit(t0), Some(0));
        assert_eq!(r.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.hit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(r.hit(t0 + Duration::from_secs(11)), None);
    }

    /// Echoes the request line after a pause, so tests can hold workers busy.
    struct Echo(Duration);

    impl Protocol<UnixStream> for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn complete(&self, buf: &[u8]) -> Option<usize> {
            buf.iter().position(|b| *b == b'\n').map(|i| i + 1)
        }
        fn refusal(&self, why: Refusal, _: &Limits) -> Vec<u8> {
            format!("{why:?}\n").into_bytes()
        }
        fn serve(&self, mut s: UnixStream, request: &[u8]) {
            std::thread::sleep(self.0);
            let _ = s.write_all(request);
        }
    }

    fn listen(tag: &str, limits: Limits, pause: Duration) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("multiwan-listen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        spawn(l, limits, Arc::new(Echo(pause))).expect("spawn");
        path
    }

    fn ask(path: &std::path::Path, req: &[u8]) -> String {
        let mut s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let _ = s.write_all(req);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    const LIMITS: Limits = Limits {
        max_active: 2,
        max_pending: 4,
        max_request: 64,
        request_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(5),
    };

    #[test]
    fn requests_are_bounded_in_size_and_time() {
        let path = listen("bounds", LIMITS, Duration::ZERO);
        assert_eq!(ask(&path, b"hello\nrest"), "hello\n");
        assert_eq!(ask(&path, &[b'x'; 200]), "TooLarge\n");
        // A client that ends its side without a newline has sent its request.
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(b"no newline, then EOF").expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert_eq!(out, "no newline, then EOF");
        // Silent clients are closed at the deadline.
        let mut idle = UnixStream::connect(&path).expect("connect");
        idle.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let start = Instant::now();
        let mut out = String::new();
        let _ = idle.read_to_string(&mut out);
        assert_eq!(out, "Timeout\n");
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn idle_connections_make_room_and_busy_workers_refuse() {
        let path = listen("caps", LIMITS, Duration::from_millis(1500));
        // More idle connections than the pending set holds: the oldest are pushed out, and a
        // prompt request still gets through.
        let idle: Vec<UnixStream> = (0..10)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut first = idle.into_iter().next().expect("one");
        first
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = String::new();
        let _ = first.read_to_string(&mut out);
        assert_eq!(out, "Evicted\n");
        // Two slow requests occupy both workers; a third is refused at once.
        let p1 = path.clone();
        let p2 = path.clone();
        let a = std::thread::spawn(move || ask(&p1, b"a\n"));
        let b = std::thread::spawn(move || ask(&p2, b"b\n"));
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(ask(&path, b"c\n"), "Busy\n");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(a.join().expect("a"), "a\n");
        assert_eq!(b.join().expect("b"), "b\n");
        // Once they are done, there is room again.
        assert_eq!(ask(&path, b"d\n"), "d\n");
        let _ = std::fs::remove_file(&path);
    }
}
