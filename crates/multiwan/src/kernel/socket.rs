//! One request/response netlink socket, generic over the message family (rtnetlink,
//! nfnetlink): send a request and collect its answers, or send a batch and collect one
//! acknowledgement per message. Every receive has a deadline, so a kernel that never answers
//! is an error, not a hang.

use std::fmt::Debug;
use std::io;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// How long a single answer may take.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// A batch up to this size fits the default netlink send buffer (`net.core.wmem_default`,
/// 212 992 bytes, less the kernel's 32 bytes of slack), with room to spare.
const SNDBUF_DEFAULT_SAFE: usize = 128 << 10;

/// A connected netlink socket with its own sequence numbers.
pub struct NlSocket {
    sock: Socket,
    seq: u32,
}

impl NlSocket {
    /// Opens a socket of `protocol` (`netlink_sys::protocols::*`). `strict` asks the kernel to
    /// filter dumps by the request's header and attributes (used for per-table route dumps).
    pub fn open(protocol: isize, strict: bool) -> Result<Self> {
        let mut sock = Socket::new(protocol).context("opening a netlink socket")?;
        sock.bind_auto().context("binding a netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))
            .context("connecting a netlink socket")?;
        // Extended acks make the kernel explain some errors; harmless where unsupported.
        let _ = sock.set_ext_ack(true);
        if strict {
            sock.set_netlink_get_strict_chk(true)
                .context("enabling strict netlink dumps")?;
        }
        let tv = nix::sys::time::TimeVal::new(ANSWER_DEADLINE.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .context("setting the netlink receive deadline")?;
        // Large dumps (conntrack) arrive faster than they are parsed.
        let _ = sock.set_rx_buf_sz(4 << 20);
        Ok(Self { sock, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn frame<T: NetlinkSerializable + Debug>(&mut self, msg: T, flags: u16) -> (u32, Vec<u8>) {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        (seq, buf)
    }

    /// Sends one request and returns its answers: every object of a dump (`NLM_F_DUMP` in
    /// `flags`), or the object(s) sent before the acknowledgement otherwise. A kernel error is
    /// returned as an `io::Error` in the chain.
    pub fn request<T>(&mut self, msg: T, flags: u16) -> Result<Vec<T>>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.ask(msg, flags)
    }

    /// [`request`](Self::request) for a caller that expects a refusal (`ENOENT`: nothing
    /// matched, or the object does not exist yet): the kernel's refusal comes back as the
    /// inner `Err`, without building an error value (anyhow captures a backtrace for every
    /// error where `RUST_BACKTRACE` is set: an unwind of the whole stack, for an answer that
    /// was expected). Only failing to talk to the kernel is the outer error.
    pub fn try_request<T>(
        &mut self,
        msg: T,
        flags: u16,
    ) -> Result<std::result::Result<Vec<T>, Refused>>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.try_ask(msg, flags)
    }

    /// [`request`](Self::request) where the request and its answers are of different types
    /// (rtnetlink: [`super::rtmsg::RtRequest`] out, [`super::rtmsg::RtMsg`] back).
    pub fn ask<Q, A>(&mut self, msg: Q, flags: u16) -> Result<Vec<A>>
    where
        Q: NetlinkSerializable + Debug,
        A: NetlinkDeserializable + Debug,
    {
        self.try_ask(msg, flags)?.map_err(Refused::into_error)
    }

    /// [`ask`](Self::ask) with the kernel's refusal apart (see [`try_request`](Self::try_request)).
    pub fn try_ask<Q, A>(
        &mut self,
        msg: Q,
        flags: u16,
    ) -> Result<std::result::Result<Vec<A>, Refused>>
    where
        Q: NetlinkSerializable + Debug,
        A: NetlinkDeserializable + Debug,
    {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = flags | NLM_F_REQUEST | if dump { 0 } else { NLM_F_ACK };
        let (seq, buf) = self.frame(msg, flags);
        self.sock
            .send(&buf, 0)
            .context("sending a netlink request")?;
        let mut out = Vec::new();
        loop {
            for m in self.receive::<A>()? {
                if m.header.sequence_number != seq {
                    continue;
                }
                if let Some(end) = settle(m.payload, &mut out) {
                    return Ok(end.map(|()| out));
                }
            }
        }
    }

    /// Sends `msgs` in one datagram (an nfnetlink batch needs that) and waits for the
    /// acknowledgements of the ones flagged `acked`; the first error is returned.
    pub fn batch<T>(&mut self, msgs: Vec<(T, u16, bool)>) -> Result<()>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let mut buf = Vec::new();
        let mut pending = std::collections::BTreeSet::new();
        for (msg, flags, acked) in msgs {
            let flags = flags | NLM_F_REQUEST | if acked { NLM_F_ACK } else { 0 };
            let (seq, b) = self.frame(msg, flags);
            if acked {
                pending.insert(seq);
            }
            buf.extend_from_slice(&b);
        }
        // An nfnetlink batch must arrive in one message (one send); the kernel refuses one
        // longer than the socket's send buffer (EMSGSIZE; 208 KiB by default), which a
        // rotation of a few thousand slots exceeds. As `nft` does, the buffer is raised to
        // the batch (SO_SNDBUFFORCE: root may go past wmem_max).
        if buf.len() > SNDBUF_DEFAULT_SAFE {
            nix::sys::socket::setsockopt(
                &self.sock,
                nix::sys::socket::sockopt::SndBufForce,
                &(buf.len() + 4096),
            )
            .context("raising the netlink send buffer for a large batch")?;
        }
        self.sock.send(&buf, 0).context("sending a netlink batch")?;
        let mut first_error = None;
        while !pending.is_empty() {
            for m in self.receive::<T>()? {
                if let NetlinkPayload::Error(e) = m.payload {
                    pending.remove(&m.header.sequence_number);
                    if e.code.is_some() && first_error.is_none() {
                        first_error = Some(e.to_io());
                    }
                }
            }
            // After an error the kernel aborts the batch; acks of later messages may not come.
            if first_error.is_some() {
                break;
            }
        }
        match first_error {
            Some(e) => Err(anyhow::Error::new(e)),
            None => Ok(()),
        }
    }

    fn receive<T: NetlinkDeserializable + Debug>(&mut self) -> Result<Vec<NetlinkMessage<T>>> {
        let (data, _) = match self.sock.recv_from_full() {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bail!("the kernel did not answer a netlink request within {ANSWER_DEADLINE:?}")
            }
            Err(e) => return Err(e).context("receiving from netlink"),
        };
        parse_all(&data)
    }
}

/// The kernel refused a request: its errno, and whether it came as the end of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub errno: i32,
    pub dump: bool,
}

impl Refused {
    /// The refusal as an error, the `io::Error` of its errno in the chain.
    pub fn into_error(self) -> anyhow::Error {
        let e = anyhow::Error::new(io::Error::from_raw_os_error(self.errno));
        if self.dump {
            e.context("the kernel failed the dump")
        } else {
            e
        }
    }
}

/// Takes one answer to a request: an object goes to `out`; the end of the exchange (the
/// done message of a dump, or the acknowledgement) is `Some`, with the kernel's refusal if it
/// reported one. A dump that failed ends with its error in the done message (strict checking
/// refuses a dump request that way, not with an error message): never mistaken for an
/// empty answer.
fn settle<A>(
    payload: NetlinkPayload<A>,
    out: &mut Vec<A>,
) -> Option<std::result::Result<(), Refused>> {
    match payload {
        NetlinkPayload::InnerMessage(i) => {
            out.push(i);
            None
        }
        NetlinkPayload::Done(d) if d.code != 0 => Some(Err(Refused {
            errno: d.code.saturating_neg(),
            dump: true,
        })),
        NetlinkPayload::Done(_) => Some(Ok(())),
        NetlinkPayload::Error(e) => Some(match e.code {
            None => Ok(()),
            Some(c) => Err(Refused {
                errno: c.get().saturating_neg(),
                dump: false,
            }),
        }),
        _ => None,
    }
}

/// Splits a datagram into its netlink messages. Anything that cannot be decoded is an error:
/// state read back from the kernel is never guessed.
pub fn parse_all<T: NetlinkDeserializable + Debug>(data: &[u8]) -> Result<Vec<NetlinkMessage<T>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let len = u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        if len < 16 || at + len > data.len() {
            bail!("truncated netlink message ({len} bytes at offset {at})");
        }
        let m = NetlinkMessage::<T>::deserialize(&data[at..at + len])
            .map_err(|e| anyhow!("cannot decode a netlink message: {e}"))?;
        out.push(m);
        at += (len + 3) & !3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage};

    #[test]
    fn a_dump_that_failed_is_an_error_not_an_empty_answer() {
        let mut out: Vec<u8> = Vec::new();
        assert!(settle(NetlinkPayload::InnerMessage(7), &mut out).is_none());
        assert_eq!(out, [7]);
        let mut done = DoneMessage::default();
        assert!(matches!(
            settle(NetlinkPayload::Done(done.clone()), &mut out),
            Some(Ok(()))
        ));
        done.code = -22;
        let e = settle(NetlinkPayload::Done(done), &mut out)
            .expect("ends")
            .expect_err("an error");
        assert_eq!(
            e,
            Refused {
                errno: 22,
                dump: true
            }
        );
        let text = format!("{:#}", e.into_error());
        assert!(
            text.contains("failed the dump") && text.contains("Invalid argument"),
            "{text}"
        );
        // An acknowledgement, then a refusal.
        let mut ack = ErrorMessage::default();
        assert!(matches!(
            settle(NetlinkPayload::Error(ack.clone()), &mut out),
            Some(Ok(()))
        ));
        ack.code = std::num::NonZeroI32::new(-2);
        let e = settle(NetlinkPayload::Error(ack), &mut out)
            .expect("ends")
            .expect_err("an error");
        assert_eq!(
            e,
            Refused {
                errno: 2,
                dump: false
            }
        );
        let err = e.into_error();
        let io = err.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(2));
    }
}
