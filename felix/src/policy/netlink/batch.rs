//! Element batches (I/O): the long-lived socket that sends an encoded [`ElementBatch`] as one
//! datagram and reads the kernel's answers to it. Judging the answers is pure
//! ([`ElementBatch::judge`]): every answer must be explained by the batch, and the ACK of the
//! last message ends it (see [`element_batch`] for which answers the kernel sends).

use std::io;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use rtnetlink::sys::{Socket, SocketAddr};

use super::decode::{answers, Answer};
use super::encode::{element_batch, ElemChange, ElemOp, ElementBatch, EncodeError};
use super::{recv_queued, recv_until, socket, ANSWER_TIMEOUT};

/// Why an element batch failed.
///
/// [`BatchError::Refused`] and [`BatchError::BatchRefused`] mean the kernel aborted the batch:
/// nothing of it was applied. After the others the kernel's state is unknown (the batch may or may
/// not have been committed), and the driver replaces the table. After any of them the socket is
/// dropped, so that a late answer cannot be taken for an answer to the next batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The batch could not be encoded (nothing was sent).
    #[error("encoding the element batch: {0}")]
    Encode(#[from] EncodeError),
    /// A socket call failed (`ENOBUFS` on receive: answers were lost).
    #[error("nfnetlink socket: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's last answer did not come in time.
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    /// The kernel refused one element message.
    #[error("kernel refused to {op} {elements} elements of set {set}: {source}")]
    Refused {
        /// The set.
        set: String,
        /// Delete or add.
        op: ElemOp,
        /// Elements in the refused message.
        elements: usize,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the batch as a whole: an error answer to `BATCH_BEGIN` or `BATCH_END`
    /// (a malformed batch, a failed commit, no memory for the per-message answers).
    #[error("kernel refused the whole batch (answer to seq {seq}): {source}")]
    BatchRefused {
        /// Sequence number of the batch message answered.
        seq: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An answer this batch does not explain: to a sequence number not in it, an ACK nobody asked
    /// for, a message that is not an answer, or anything after the last answer.
    #[error("unexpected answer from the kernel: {0}")]
    Unexpected(String),
    /// An answer that could not be decoded.
    #[error("malformed answer from the kernel: {0}")]
    Malformed(String),
}

impl ElementBatch {
    /// Fold one answer into `failed` (the first refused message); `Some` once the outcome of the
    /// batch is known. See [`element_batch`] for which answers the kernel sends.
    fn judge(&self, a: Answer, failed: &mut Option<BatchError>) -> Option<Result<(), BatchError>> {
        let (seq, code) = match a {
            Answer::Error { seq, code } => (seq, code),
            Answer::Done => return Some(Err(BatchError::Unexpected("NLMSG_DONE".into()))),
            Answer::Msg(ty, _) => {
                return Some(Err(BatchError::Unexpected(format!(
                    "message type {ty:#06x}"
                ))))
            }
        };
        if code > 0 {
            return Some(Err(BatchError::Malformed(format!(
                "positive error code {code} for seq {seq}"
            ))));
        }
        if seq == self.begin_seq || seq == self.end_seq {
            return Some(Err(if code < 0 {
                BatchError::BatchRefused {
                    seq,
                    source: io::Error::from_raw_os_error(-code),
                }
            } else {
                BatchError::Unexpected(format!("ACK of the batch delimiter (seq {seq})"))
            }));
        }
        // Message i has sequence number begin_seq + 1 + i (wrapping).
        let i = seq.wrapping_sub(self.begin_seq).wrapping_sub(1) as usize;
        let Some(m) = self.messages.get(i) else {
            return Some(Err(BatchError::Unexpected(format!(
                "answer {code} to seq {seq}, which is not in this batch ({}..={})",
                self.begin_seq, self.end_seq
            ))));
        };
        let last = i + 1 == self.messages.len();
        if code < 0 {
            failed.get_or_insert_with(|| BatchError::Refused {
                set: m.set.clone(),
                op: m.op,
                elements: m.elements,
                source: io::Error::from_raw_os_error(-code),
            });
        } else if !last {
            return Some(Err(BatchError::Unexpected(format!(
                "ACK of seq {seq}, which did not ask for one"
            ))));
        }
        last.then(|| failed.take().map_or(Ok(()), Err))
    }

    /// Judge every answer of one datagram; `Some` once the outcome is known (and nothing
    /// follows it in the datagram).
    fn judge_datagram(
        &self,
        data: &[u8],
        failed: &mut Option<BatchError>,
    ) -> Result<Option<Result<(), BatchError>>, BatchError> {
        let list = answers(data, b"").map_err(|e| BatchError::Malformed(e.to_string()))?;
        let mut done = None;
        for a in list {
            if done.is_some() {
                return Err(BatchError::Unexpected(format!(
                    "{a:?} after the batch's last answer"
                )));
            }
            done = self.judge(a, failed);
        }
        Ok(done)
    }
}

/// A long-lived nfnetlink socket for element batches, bound in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct ElementSocket {
    sock: Socket,
    seq: u32,
    /// The send buffer size the kernel reports (`sk_sndbuf`).
    sndbuf: usize,
    timeout: Duration,
}

impl ElementSocket {
    /// Open the socket; answers are awaited for [`ANSWER_TIMEOUT`].
    pub fn open() -> io::Result<ElementSocket> {
        let sock = socket()?;
        // Error answers echo only the header of the refused message, not its up to 64 KiB.
        sock.set_cap_ack(true)?;
        let sndbuf = getsockopt(&sock, sockopt::SndBuf)?;
        Ok(ElementSocket {
            sock,
            seq: 1,
            sndbuf,
            timeout: ANSWER_TIMEOUT,
        })
    }

    /// Wait at most `timeout` for the answers to a batch.
    pub fn with_timeout(mut self, timeout: Duration) -> ElementSocket {
        self.timeout = timeout;
        self
    }

    /// Apply `changes` to sets of `inet table` as one transaction (one batch in one datagram, see
    /// [`element_batch`]); returns the batch size in bytes. After an error drop the socket.
    pub fn apply(&mut self, table: &str, changes: &[ElemChange]) -> Result<usize, BatchError> {
        let batch = element_batch(table, changes, self.seq)?;
        self.seq = batch.next_seq();
        if batch.messages.is_empty() {
            return Ok(0);
        }
        self.reserve_sndbuf(batch.bytes.len())?;
        let io = |what| move |source| BatchError::Io { what, source };
        let sent = self
            .sock
            .send_to(&batch.bytes, &SocketAddr::new(0, 0), 0)
            .map_err(io("sending the batch"))?;
        if sent != batch.bytes.len() {
            return Err(BatchError::Io {
                what: "sending the batch",
                source: io::Error::other(format!("sent {sent} of {} bytes", batch.bytes.len())),
            });
        }
        self.read_answers(&batch)?;
        Ok(batch.bytes.len())
    }

    /// Netlink refuses a datagram longer than the send buffer (less 32 bytes) with `EMSGSIZE`,
    /// and a batch must be one datagram to be one transaction. So grow the buffer to fit, as nft
    /// does for its batches: `SO_SNDBUFFORCE` (we have `CAP_NET_ADMIN`, or nothing here works),
    /// else `SO_SNDBUF` up to `wmem_max`. If the batch still does not fit, sending fails and the
    /// driver applies the change through `nft` instead.
    fn reserve_sndbuf(&mut self, len: usize) -> Result<(), BatchError> {
        let need = len + 64;
        if need <= self.sndbuf {
            return Ok(());
        }
        if setsockopt(&self.sock, sockopt::SndBufForce, &need).is_err() {
            let _ = setsockopt(&self.sock, sockopt::SndBuf, &need);
        }
        self.sndbuf = getsockopt(&self.sock, sockopt::SndBuf).map_err(|e| BatchError::Io {
            what: "reading SO_SNDBUF",
            source: e.into(),
        })?;
        Ok(())
    }

    /// Read answers to `batch` until its outcome is known, for at most the timeout.
    fn read_answers(&self, batch: &ElementBatch) -> Result<(), BatchError> {
        let deadline = Instant::now() + self.timeout;
        let mut failed = None;
        let outcome = loop {
            let data = recv_until(&self.sock, deadline).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => BatchError::Timeout(self.timeout),
                _ => BatchError::Io {
                    what: "receiving answers",
                    source: e,
                },
            })?;
            if let Some(done) = batch.judge_datagram(&data, &mut failed)? {
                break done;
            }
        };
        outcome?;
        // All answers were queued inside sendmsg, the last one last: nothing may follow it.
        match recv_queued(&self.sock) {
            Ok(None) => Ok(()),
            Ok(Some(data)) => {
                let what = answers(&data, b"").map_or_else(|e| e.to_string(), |a| format!("{a:?}"));
                Err(BatchError::Unexpected(format!(
                    "{what} after the batch's last answer"
                )))
            }
            Err(source) => Err(BatchError::Io {
                what: "receiving answers",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
