//! One client WebSocket: a task that owns the socket, reads and validates
//! client frames, rate-limits them, forwards them to the room link, and
//! writes the frames queued for it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rooms_proto::client::{self, ClientFrame, ErrorCode};
use rooms_proto::host::{Chat, HistoryRequest, SetName, Typing, gateway_frame};
use rooms_proto::{RoomId, UserId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::conn::{CloseSignal, ConnHandle, ConnId, Frames, RateLimiter, Verdict, close_code};
use crate::link::{LinkCmd, LinkHandle, Links};
use crate::metrics::Metrics;

/// Queued batches written to the socket per flush at most.
const WRITE_BATCH: usize = 64;
/// After sending a close frame, how long the client gets to read it and
/// answer before the socket is dropped (its frames meanwhile are discarded).
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Longest wait for a close frame to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is connecting where, established before the upgrade.
pub struct Session {
    pub conn: ConnId,
    pub room: RoomId,
    pub user: UserId,
    pub since: Option<u64>,
    pub epoch: String,
    /// When the session's token expires: the socket is closed with 4003.
    pub expires_at: Option<std::time::SystemTime>,
}

/// What a session needs from the gateway.
#[derive(Clone)]
pub struct SessionEnv {
    pub links: Arc<Links>,
    pub metrics: Arc<Metrics>,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub send_queue: usize,
    /// A socket with nothing to send for this long gets a WebSocket ping, so
    /// proxies and load balancers keep idle connections open.
    pub ping_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

pub async fn run<S>(ws: WebSocketStream<S>, session: Session, env: SessionEnv)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(env.send_queue);
    let signal = Arc::new(CloseSignal::default());
    let handle = ConnHandle::new(tx, Arc::clone(&signal));
    let Session { conn, room, user, since, epoch, expires_at } = session;
    env.metrics.connections_open.inc();
    env.metrics.connections_total.inc();

    let join = LinkCmd::Join { conn, user, since, epoch, handle: handle.clone() };
    let link = env.links.dispatch(&room, join).await;
    let (sink, mut stream) = ws.split();
    // The writer is its own task, woken only by frames to write: a delivery
    // never polls the reader, the timers or the close signal.
    let (stop_writer, stopped_writer) = oneshot::channel();
    let mut writer = tokio::spawn(write_frames(sink, rx, env.ping_interval, stopped_writer));
    // Set when the writer ended first (write error or closed queue).
    let mut written = None;

    if let Ok(link) = link {
        let reader = read_frames(&mut stream, conn, &link, &handle, &signal, &env);
        let mut shutdown = env.shutdown.clone();
        tokio::select! {
            () = reader => {}
            ended = &mut writer => written = Some(ended.ok().flatten()),
            _ = signal.requested() => {}
            () = crate::stopped(&mut shutdown) => {
                signal.trigger(close_code::RESTART, "gateway restarting; reconnect");
            }
            () = token_expiry(expires_at) => {
                signal.trigger(close_code::TOKEN_EXPIRED, "token expired; reconnect with a fresh one");
            }
        }
        link.send(LinkCmd::Leave { conn }).await;
    } else {
        signal.trigger(close_code::TRY_AGAIN_LATER, "room unavailable");
    }

    // The socket's write half comes back unless the writer ended on an error.
    let sink = match written {
        Some(sink) => sink,
        None => {
            let _ = stop_writer.send(());
            writer.await.ok().flatten()
        }
    };
    if let Some(mut sink) = sink {
        if let Some((code, reason)) = signal.get() {
            let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) };
            let sent =
                tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
            if matches!(sent, Ok(Ok(()))) {
                // Closing handshake: read (and drop) until the client answers, so
                // it is not reset while still sending and gets to see the code.
                let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, drain).await;
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    }
    env.metrics.connections_open.dec();
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Writes queued frames, many per flush, until `stop` (then hands the sink
/// back) or a write fails (None). A socket that wrote nothing for a whole
/// ping interval gets a ping, so proxies keep idle connections open; the
/// timer is reset once per interval, not per frame.
async fn write_frames<S>(
    mut sink: Sink<S>,
    mut rx: mpsc::Receiver<Frames>,
    ping_interval: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Option<Sink<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let ping = tokio::time::sleep(ping_interval);
    tokio::pin!(ping);
    let mut wrote = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Some(sink),
            received = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if received == 0 {
                    return Some(sink);
                }
                if received < WRITE_BATCH {
                    // Let the fan-out that woke us queue more before the
                    // syscall: under load one flush then carries several
                    // batches; when idle this costs one reschedule.
                    tokio::task::yield_now().await;
                    while batch.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(frames) => batch.push(frames),
                            Err(_) => break,
                        }
                    }
                }
                for frames in batch.drain(..) {
                    for frame in frames.iter() {
                        sink.feed(Message::Text(frame.clone())).await.ok()?;
                    }
                }
                sink.flush().await.ok()?;
                wrote = true;
            }
            () = &mut ping => {
                if !wrote {
                    sink.send(Message::Ping(Default::default())).await.ok()?;
                }
                wrote = false;
                ping.as_mut().reset(tokio::time::Instant::now() + ping_interval);
            }
        }
    }
}

/// Resolves when the session's token expires (never without one).
async fn token_expiry(expires_at: Option<std::time::SystemTime>) {
    match expires_at {
        Some(at) => {
            let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

/// Reads until the client closes or must be closed (the reason goes to `signal`).
async fn read_frames<S>(
    stream: &mut S,
    conn: ConnId,
    link: &LinkHandle,
    handle: &ConnHandle,
    signal: &CloseSignal,
    env: &SessionEnv,
) where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut limiter = RateLimiter::new(env.rate_limit, env.rate_burst);
    let refuse = |code: ErrorCode, message: &str| {
        env.metrics.frames_rejected.inc();
        handle.send_error(code, message);
    };
    while let Some(message) = stream.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => {
                refuse(
                    ErrorCode::InvalidMessage,
                    "binary frames are not supported; send JSON text",
                );
                continue;
            }
            Ok(Message::Close(_)) | Err(WsError::ConnectionClosed) => return,
            Ok(_) => continue,
            Err(WsError::Capacity(_)) => {
                signal.trigger(close_code::TOO_BIG, "frame larger than 64 KiB");
                return;
            }
            Err(_) => return,
        };
        let received = tokio::time::Instant::now();
        env.metrics.frames_in.inc();
        match limiter.check() {
            Verdict::Allow => {}
            Verdict::Limited => {
                env.metrics.rate_limited.inc();
                refuse(ErrorCode::RateLimited, "too many messages; this one was dropped");
                continue;
            }
            Verdict::Flood => {
                env.metrics.rate_limited.inc();
                signal.trigger(close_code::POLICY, "message flood");
                return;
            }
        }
        let kind = match client::parse(&text) {
            Ok(ClientFrame::Chat { text, id }) => gateway_frame::Kind::Chat(Chat {
                conn,
                text,
                id: id.unwrap_or_default(),
                // Set by the link.
                tag: 0,
                traceparent: chat_traceparent(conn),
            }),
            Ok(ClientFrame::Name { name }) => gateway_frame::Kind::SetName(SetName { conn, name }),
            Ok(ClientFrame::Typing) => gateway_frame::Kind::Typing(Typing { conn }),
            Ok(ClientFrame::History { before, limit }) => {
                gateway_frame::Kind::History(HistoryRequest {
                    conn,
                    before: before.unwrap_or(0),
                    limit,
                })
            }
            Err(error) => {
                refuse(error.code, &error.message);
                continue;
            }
        };
        if !link.send(LinkCmd::Frame { conn, kind, received }).await {
            signal.trigger(close_code::RESTART, "room moved; reconnect");
            return;
        }
    }
}

/// The trace context of a new span for one chat message (which the roomhost
/// continues), or empty when traces are off.
fn chat_traceparent(conn: ConnId) -> String {
    if !rooms_telemetry::logging::traces_enabled() {
        return String::new();
    }
    let span = tracing::info_span!("gateway.chat", conn.id = conn);
    rooms_telemetry::propagation::traceparent(&span)
}
