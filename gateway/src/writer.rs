//! Server → client WebSocket frames written straight to the socket's write
//! half. The frames a room sends are already serialized and shared by every
//! socket of the room: a batch goes out as one vectored write of small
//! headers and the shared payloads, so nothing is copied per socket and no
//! buffer is kept between writes (an idle socket holds no write memory).
//!
//! Server frames are never masked (RFC 6455 §5.1); text frames are never
//! fragmented. The read side (tungstenite) cannot write: pongs and the
//! close handshake are sent from here.

use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;
/// Control frame payloads are at most 125 bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Frames per vectored write (two slices each; IOV_MAX is 1024).
const FRAMES_PER_WRITE: usize = 256;

/// A frame header: FIN + opcode, then the payload length (7, 16 or 64 bits).
#[derive(Clone, Copy)]
struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    fn new(opcode: u8, payload: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = FIN | opcode;
        let len = if payload < 126 {
            bytes[1] = payload as u8;
            2
        } else if let Ok(short) = u16::try_from(payload) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

pub struct FrameWriter<W> {
    io: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self { io }
    }

    /// Writes text frames, as few syscalls as the socket allows.
    pub async fn text<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a Utf8Bytes>,
    ) -> io::Result<()> {
        let frames: Vec<&[u8]> = frames.into_iter().map(|f| f.as_bytes()).collect();
        for chunk in frames.chunks(FRAMES_PER_WRITE) {
            let headers: Vec<Header> =
                chunk.iter().map(|f| Header::new(OP_TEXT, f.len())).collect();
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
            for (header, payload) in headers.iter().zip(chunk) {
                slices.push(IoSlice::new(header.as_slice()));
                slices.push(IoSlice::new(payload));
            }
            write_all_vectored(&mut self.io, &mut slices[..]).await?;
        }
        Ok(())
    }

    /// Writes one binary frame (class rooms pass clients' binary through).
    pub async fn binary(&mut self, payload: &[u8]) -> io::Result<()> {
        let header = Header::new(OP_BINARY, payload.len());
        let mut slices = [IoSlice::new(header.as_slice()), IoSlice::new(payload)];
        write_all_vectored(&mut self.io, &mut slices).await
    }

    pub async fn ping(&mut self) -> io::Result<()> {
        self.control(OP_PING, &[]).await
    }

    /// Answers a client's ping with its payload.
    pub async fn pong(&mut self, payload: &Bytes) -> io::Result<()> {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        self.control(OP_PONG, payload).await
    }

    /// Sends a close frame with `code` and `reason` (cut to fit a control frame).
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len().min(MAX_CONTROL_PAYLOAD - 2));
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.control(OP_CLOSE, &payload).await
    }

    /// Ends the write direction (TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }

    async fn control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let header = Header::new(opcode, payload.len());
        let mut slices = [IoSlice::new(header.as_slice()), IoSlice::new(payload)];
        write_all_vectored(&mut self.io, &mut slices).await
    }
}

/// `write_all` for vectored writes: resumes after partial writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// What a real client (tungstenite) reads from the frames written here.
    type Pipe = tokio::io::WriteHalf<tokio::io::DuplexStream>;

    async fn client_reads(write: impl AsyncFnOnce(&mut FrameWriter<Pipe>)) -> Vec<Message> {
        // A tiny pipe forces partial writes; what the client writes back
        // (pongs, its close reply) is read and dropped.
        let (server, client) = tokio::io::duplex(7);
        let (mut server_read, server_write) = tokio::io::split(server);
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut tokio::io::sink()).await;
        });
        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut got = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                let close = matches!(message, Message::Close(_));
                got.push(message);
                if close {
                    break;
                }
            }
            got
        });
        let mut writer = FrameWriter::new(server_write);
        write(&mut writer).await;
        // The client may already have stopped reading (it saw a close).
        let _ = writer.close(4001, "kicked").await;
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn a_client_reads_every_frame_length_and_control_frame() {
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000];
        let frames: Vec<Utf8Bytes> = sizes
            .iter()
            .map(|n| Utf8Bytes::from("é".repeat(*n / 2) + &"x".repeat(*n % 2)))
            .collect();
        let expected = frames.clone();
        let got = client_reads(async |w| {
            w.text(&frames).await.unwrap();
            w.ping().await.unwrap();
            w.pong(&Bytes::from(vec![7u8; 300])).await.unwrap();
        })
        .await;
        let texts: Vec<Utf8Bytes> = got
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, expected);
        assert!(got.iter().any(|m| matches!(m, Message::Ping(p) if p.is_empty())));
        assert!(got.iter().any(|m| matches!(m, Message::Pong(p) if p.len() == 125)));
        match got.last() {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "kicked");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn long_close_reasons_are_cut_on_a_character_boundary() {
        let got = client_reads(async |w| {
            w.close(1008, &"é".repeat(100)).await.unwrap();
        })
        .await;
        match got.first() {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert!(frame.reason.len() <= 123 && frame.reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }
}
