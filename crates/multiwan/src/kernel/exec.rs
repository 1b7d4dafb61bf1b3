//! The one way multiwan runs a program: with its input on stdin (never a file in shared temp
//! space), its output captured, and a deadline after which it is killed. Only structural
//! nftables loads (`nft -f -`, `nft -c -f -`) still need a process; health changes never do.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Runs `program ARGS` with `input` on stdin; kills it after `deadline`.
pub fn run(program: &str, args: &[&str], input: &[u8], deadline: Duration) -> Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("no stdin")?;
    let input = input.to_vec();
    // Writing and waiting happen off this thread, so neither a full pipe nor a hung program
    // can block the caller beyond the deadline.
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(&input);
        drop(stdin);
        r
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(r) => r.with_context(|| format!("waiting for {program}"))?,
        Err(_) => {
            // The child has not been reaped (the waiter still waits for it), so its pid is
            // still ours to signal.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = waiter.join();
            let _ = writer.join();
            bail!("{program} did not finish within {deadline:?} and was killed");
        }
    };
    let _ = waiter.join();
    if let Ok(Err(e)) = writer.join() {
        // A program that exits before reading all input fails below with its own message.
        if out.status.success() {
            return Err(e).with_context(|| format!("writing to {program}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_deadline() {
        let out = run("cat", &[], b"hello", Duration::from_secs(5)).expect("cat");
        assert_eq!(out.stdout, b"hello");
        let t = std::time::Instant::now();
        let e = run("sleep", &["10"], b"", Duration::from_millis(200)).expect_err("deadline");
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
