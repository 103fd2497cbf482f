//! Response bodies: a whole buffer, or a stream of chunks fed through a channel (watches). Dropping
//! the response (the client went away, or the connection was closed by a test control) drops the
//! receiver, which the sending task notices and ends on.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use tokio::sync::mpsc;

/// The body type of every response.
pub type RespBody = BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

/// A body fed by `mpsc::Sender<Bytes>`; it ends when every sender is dropped.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn channel(depth: usize) -> (mpsc::Sender<Bytes>, RespBody) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, ChannelBody { rx }.boxed())
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}
