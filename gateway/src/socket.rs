//! An upgraded client connection, split for its two tasks: the reader
//! (tungstenite parses and unmasks client frames, enforces frame limits)
//! and the [`FrameWriter`] (the only writer). The halves are the TCP
//! socket's own, so reading and writing never contend for a lock.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::writer::FrameWriter;

pub type Reader = WebSocketStream<ReadSide>;
pub type Writer = FrameWriter<OwnedWriteHalf>;

/// The read half as tungstenite's transport: bytes the HTTP parser read
/// past the handshake come first; what tungstenite would write itself
/// (automatic pongs and close replies) is dropped, since the session sends
/// those through its writer.
pub struct ReadSide {
    pre: Bytes,
    inner: OwnedReadHalf,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Splits an upgraded connection; None if it is not a plain TCP stream
/// (the gateway only serves those).
pub async fn split(upgraded: Upgraded, config: WebSocketConfig) -> Option<(Reader, Writer)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    let (read, write) = parts.io.into_inner().into_split();
    // Copied out: the parser's whole buffer would otherwise live as long as
    // the socket.
    let pre = Bytes::copy_from_slice(&parts.read_buf);
    let side = ReadSide { pre, inner: read };
    let reader = WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await;
    Some((reader, FrameWriter::new(write)))
}
