//! A client socket in a class room, once the class's `fetch` answered 101:
//! its messages, text or binary, go to the room's class as they are, and
//! what the class sends comes back the same way. The gateway adds no
//! protocol of its own; it only bounds the client: frame size (1009), and a
//! flood far over the rate limit closes it (1008).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use futures_util::StreamExt;
use rooms_proto::host::{SocketClosed, SocketData, gateway_frame, socket_data};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::conn::{CloseSignal, ConnHandle, ConnId, Outbox, RateLimiter, Verdict, close_code};
use crate::link::{LinkCmd, LinkHandle};
use crate::session::{SessionEnv, close, write_frames};
use crate::socket::{Reader, Writer};

/// The socket's parts made before the handshake went to the class.
pub(crate) struct ClassConn {
    pub(crate) conn: ConnId,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) signal: Arc<CloseSignal>,
    pub(crate) handle: ConnHandle,
    /// The room's link, which took the handshake.
    pub(crate) link: LinkHandle,
    /// The connection's place under `--max-connections`, held until it ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// The socket's whole life, as one task's future (a plain `fn`, so that
/// its arguments are kept once in the state; see `session::run`).
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(crate) fn run(
    mut reader: Reader,
    writer: Writer,
    socket: ClassConn,
    env: SessionEnv,
) -> impl Future<Output = ()> + Send {
    async move {
        let ClassConn { conn, outbox, signal, handle, link, permit: _permit } = socket;
        env.metrics.connections_open.inc();
        env.metrics.connections_total.inc();
        let mut writer = tokio::spawn(write_frames(writer, Arc::clone(&outbox), env.ping_interval));
        let mut stopping = env.stopping.clone();
        let mut written = None;
        let closed = tokio::select! {
            closed = read(&mut reader, conn, &link, &handle, &signal, &env) => closed,
            ended = &mut writer => {
                written = Some(ended.ok().flatten());
                None
            }
            _ = signal.requested() => None,
            () = stopping.wait() => {
                signal.trigger(close_code::RESTART, "gateway restarting; reconnect");
                None
            }
        };
        // The class hears how the socket ended (1006: it just broke).
        let (code, reason, clean) = match (&closed, signal.get()) {
            (Some((code, reason)), _) => (*code, reason.clone(), true),
            (None, Some((code, reason))) => (code, reason, true),
            (None, None) => (1006, String::new(), false),
        };
        let ended = SocketClosed { conn, code: code.into(), reason, clean };
        let cmd = LinkCmd::Socket { conn, kind: gateway_frame::Kind::SocketClosed(ended) };
        // A link that stopped meanwhile took its sockets with it.
        let _ = Box::pin(link.send(cmd)).await;
        outbox.finish();
        let writer = match written {
            Some(writer) => writer,
            None => writer.await.ok().flatten(),
        };
        if let Some(writer) = writer {
            let client_code = closed.map(|(code, _)| code);
            Box::pin(close(writer, &mut reader, signal.get(), client_code)).await;
        }
        env.metrics.connections_open.dec();
    }
}

/// Passes the client's messages to the room until it closes (its code and
/// reason) or must be closed (the reason goes to `signal`; None).
async fn read(
    reader: &mut Reader,
    conn: ConnId,
    link: &LinkHandle,
    handle: &ConnHandle,
    signal: &CloseSignal,
    env: &SessionEnv,
) -> Option<(u16, String)> {
    let mut limiter = RateLimiter::new(env.rate_limit, env.rate_burst);
    while let Some(message) = reader.next().await {
        let data = match message {
            Ok(Message::Text(text)) => socket_data::Data::Text(text.as_str().to_owned()),
            Ok(Message::Binary(bytes)) => socket_data::Data::Binary(bytes),
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                return Some((code, reason));
            }
            Ok(Message::Ping(payload)) => {
                handle.pong(payload);
                continue;
            }
            Ok(_) => continue,
            Err(WsError::Capacity(_)) => {
                signal.trigger(close_code::TOO_BIG, "frame larger than 64 KiB");
                return None;
            }
            Err(_) => return None,
        };
        match limiter.check() {
            Verdict::Allow => {}
            // The class speaks its own protocol: no `rate_limited` frame
            // to answer with; the message is dropped and counted.
            Verdict::Limited => {
                env.metrics.frames_rejected.inc();
                continue;
            }
            Verdict::Flood => {
                signal.trigger(close_code::POLICY, "too many messages");
                return None;
            }
        }
        env.metrics.frames_in.inc();
        let frame = SocketData { conn, data: Some(data), ..SocketData::default() };
        let cmd = LinkCmd::Socket { conn, kind: gateway_frame::Kind::SocketData(frame) };
        if !Box::pin(link.send(cmd)).await {
            return None;
        }
    }
    None
}
