//! Counting the processes a daemon spawns, exactly: the kernel's process-events connector
//! (`cn_proc`, netlink) reports every fork with its parent and child; the counter keeps those
//! whose parent is the daemon or one of the processes it spawned, so short-lived `ip`/`nft`
//! children that sampling `/proc` would miss are all counted, and other processes on a busy
//! machine are not. The socket only listens; it changes nothing. The connector exists only in
//! the initial network namespace, so the counter must be started from a thread there.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use netlink_sys::{protocols::NETLINK_CONNECTOR, Socket, SocketAddr};

/// `CN_IDX_PROC` / `CN_VAL_PROC` (linux/connector.h): the process-events channel.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` (linux/cn_proc.h).
const MCAST_LISTEN: u32 = 1;
/// `PROC_EVENT_FORK`.
const EVENT_FORK: u32 = 1;
/// nlmsghdr (16 bytes) + cn_msg (20 bytes): where the proc_event starts.
const EVENT_OFFSET: usize = 36;
const NLMSG_DONE: u16 = 3;

/// Counts processes forked by `root` and its descendants until [`ForkCounter::finish`].
pub struct ForkCounter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64>>>,
}

impl ForkCounter {
    /// Subscribes to process events (needs root and `CONFIG_PROC_EVENTS`) and starts counting.
    pub fn start(root: u32) -> Result<Self> {
        let mut s = Socket::new(NETLINK_CONNECTOR).context("opening a connector socket")?;
        s.bind(&SocketAddr::new(std::process::id(), CN_IDX_PROC))
            .context("joining the process-events group")?;
        // Events of the whole machine arrive here; a large buffer keeps a burst from
        // overflowing it between two reads.
        let _ = s.set_rx_buf_sz(8 << 20);
        s.send(&listen_request(), 0)
            .context("subscribing to process events")?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name("fork-counter".into())
            .spawn(move || count(&s, root, &st))
            .context("spawning the fork counter")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops counting and returns how many processes were forked. Fails when events were
    /// lost (the socket overflowed), rather than reporting a count that may be short.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .context("already finished")?
            .join()
            .map_err(|_| anyhow!("fork counter panicked"))?
    }
}

impl Drop for ForkCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn count(s: &Socket, root: u32, stop: &AtomicBool) -> Result<u64> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut tree = BTreeSet::from([root as i32]);
    let mut n = 0u64;
    // Drain what is queued after the stop flag too, so the last events count.
    let mut draining = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            draining = true;
        }
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        let ready = poll(
            &mut fds,
            PollTimeout::from(if draining { 0u16 } else { 50 }),
        )
        .context("polling the connector socket")?;
        if ready == 0 {
            if draining {
                return Ok(n);
            }
            continue;
        }
        let (buf, _) = s
            .recv_from_full()
            .context("reading process events (events lost)")?;
        for (parent, child) in forks(&buf) {
            if tree.contains(&parent) {
                tree.insert(child);
                n += 1;
            }
        }
    }
}

/// The subscription message: nlmsghdr, cn_msg for the proc channel, the LISTEN op.
fn listen_request() -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&std::process::id().to_ne_bytes()); // nlmsg_pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len of the payload
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&MCAST_LISTEN.to_ne_bytes());
    m
}

/// (parent tgid, child pid) of every fork of a new process (not a thread) in a datagram.
fn forks(buf: &[u8]) -> Vec<(i32, i32)> {
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(len) = u32_at(buf, off).map(|l| l as usize) {
        let Some(msg) = buf.get(off..off + len).filter(|_| len >= 16) else {
            break;
        };
        if u32_at(msg, 16) == Some(CN_IDX_PROC) && u32_at(msg, EVENT_OFFSET) == Some(EVENT_FORK) {
            // proc_event: what, cpu, timestamp (8), then parent pid, parent tgid, child pid,
            // child tgid.
            let at = |k: usize| u32_at(msg, EVENT_OFFSET + 16 + 4 * k).map(|v| v as i32);
            if let (Some(ptgid), Some(cpid), Some(ctgid)) = (at(1), at(2), at(3)) {
                if cpid == ctgid {
                    out.push((ptgid, cpid));
                }
            }
        }
        off += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_event(ptgid: i32, cpid: i32, ctgid: i32) -> Vec<u8> {
        let mut m = vec![0u8; EVENT_OFFSET + 32];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m[EVENT_OFFSET..EVENT_OFFSET + 4].copy_from_slice(&EVENT_FORK.to_ne_bytes());
        for (k, v) in [ptgid, ptgid, cpid, ctgid].iter().enumerate() {
            let i = EVENT_OFFSET + 16 + 4 * k;
            m[i..i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        m
    }

    #[test]
    fn parses_process_forks_and_skips_threads() {
        let mut buf = fork_event(10, 11, 11);
        buf.extend(fork_event(10, 12, 10)); // a thread of 10
        assert_eq!(forks(&buf), vec![(10, 11)]);
        assert!(forks(&[1, 2]).is_empty());
    }

    #[test]
    fn counts_a_real_child_and_its_child() {
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        let me = std::process::id();
        let c = ForkCounter::start(me).expect("start");
        // sh forks once more for the subshell's command.
        let st = std::process::Command::new("sh")
            .args(["-c", "(true); /bin/true"])
            .status()
            .expect("sh");
        assert!(st.success());
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Other tests of this binary may fork at the same time, hence ≥.
        let n = c.finish().expect("finish");
        assert!(n >= 2, "counted {n}");
    }
}
