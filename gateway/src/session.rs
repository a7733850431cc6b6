//! One client WebSocket: a task that owns the socket, reads and validates
//! client frames, rate-limits them, forwards them to the room link, and
//! writes the frames queued for it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rooms_proto::client::{self, ClientFrame, ErrorCode};
use rooms_proto::host::{Chat, HistoryRequest, SetName, Typing, gateway_frame};
use rooms_proto::server;
use rooms_proto::{RoomId, UserId};
use rooms_server::Stopping;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::conn::{
    CloseSignal, ConnHandle, ConnId, Frames, Outbox, Outgoing, RateLimiter, Verdict, close_code,
};
use crate::link::{LinkCmd, LinkHandle, Links};
use crate::metrics::Metrics;
use crate::socket::{Reader, Writer};

/// The close code answered to a client that closed without one.
const NORMAL_CLOSURE: u16 = 1000;
/// Queued batches written to the socket per flush at most.
const WRITE_BATCH: usize = 64;
/// After sending a close frame, how long the client gets to read it and
/// answer before the socket is dropped (its frames meanwhile are discarded).
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Longest wait for a close frame to be written, after what was queued
/// before it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client closed for what it sent (flood, oversized frame) first gets the
/// answers to what was accepted before: the session waits until its queue
/// has been quiet for [`SETTLE_QUIET`], at most this long.
const SETTLE_MAX: Duration = Duration::from_secs(1);
const SETTLE_QUIET: Duration = Duration::from_millis(100);

/// Who is connecting where, established before the upgrade.
pub struct Session {
    pub conn: ConnId,
    pub room: RoomId,
    pub user: UserId,
    pub since: Option<u64>,
    pub epoch: String,
    /// When the session's token expires: the socket is closed with 4003.
    pub expires_at: Option<std::time::SystemTime>,
    /// The connection's place under `--max-connections`, held until it ends.
    pub permit: OwnedSemaphorePermit,
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
    pub stopping: Stopping,
}

/// The socket's whole life, as one task's future. A plain `fn` returning
/// an `async move` block: an `async fn` would keep its arguments twice in
/// its state (as arguments and as moved-in locals), and this state is what
/// every idle connection costs.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub fn run(
    mut reader: Reader,
    writer: Writer,
    session: Session,
    env: SessionEnv,
) -> impl Future<Output = ()> + Send {
    async move {
        let _permit = session.permit;
        let outbox = Outbox::new(env.send_queue);
        let signal = Arc::new(CloseSignal::default());
        let handle = ConnHandle::new(Arc::clone(&outbox), Arc::clone(&signal));
        let conn = session.conn;
        env.metrics.connections_open.inc();
        env.metrics.connections_total.inc();

        let join = LinkCmd::Join {
            conn,
            user: session.user,
            since: session.since,
            epoch: session.epoch,
            handle: handle.clone(),
        };
        // Boxed, as the closing below: futures that run once, at either end of
        // the connection, take no room in the session's state while it is idle.
        let link = Box::pin(env.links.dispatch(&session.room, join)).await;
        // The writer is its own task, woken only by frames to write: a delivery
        // never polls the reader, the timers or the close signal. It ends when
        // the outbox does, after writing what was queued.
        let mut writer = tokio::spawn(write_frames(writer, Arc::clone(&outbox), env.ping_interval));
        // Set when the writer ended first (write error or closed queue).
        let mut written = None;
        // The client's close frame, if it closed first: answered with its code.
        let mut client_closed = None;

        if let Ok(link) = link {
            let read = read_frames(&mut reader, conn, &link, &handle, &signal, &env);
            let mut stopping = env.stopping.clone();
            tokio::select! {
                closed = read => client_closed = closed,
                ended = &mut writer => written = Some(ended.ok().flatten()),
                _ = signal.requested() => {}
                () = stopping.wait() => {
                    signal.trigger(close_code::RESTART, "gateway restarting; reconnect");
                }
                () = token_expiry(session.expires_at) => {
                    signal.trigger(close_code::TOKEN_EXPIRED, "token expired; reconnect with a fresh one");
                }
            }
            if signal
                .get()
                .is_some_and(|(code, _)| code == close_code::POLICY || code == close_code::TOO_BIG)
            {
                // The close comes after the answers (echoes, refusals) to what
                // was accepted before it.
                Box::pin(settle(&outbox)).await;
            }
            Box::pin(link.send(LinkCmd::Leave { conn })).await;
        } else {
            signal.trigger(close_code::TRY_AGAIN_LATER, "room unavailable");
        }

        // Nothing more is queued for this socket (the link may still deliver
        // until it processes the Leave). What is queued is written before the
        // close frame, unless the client was too slow to take it.
        if signal.get().is_some_and(|(code, _)| code == close_code::TRY_AGAIN_LATER) {
            outbox.close();
        } else {
            outbox.finish();
        }
        // The socket's write half comes back unless the writer ended on an error
        // or could not write what was queued in time.
        let writer = match written {
            Some(writer) => writer,
            None => match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
                Ok(ended) => ended.ok().flatten(),
                Err(_) => {
                    writer.abort();
                    None
                }
            },
        };
        if let Some(writer) = writer {
            Box::pin(close(writer, &mut reader, signal.get(), client_closed)).await;
        }
        env.metrics.connections_open.dec();
    }
}

/// Ends the connection: our close frame (`ours`), then the client's answer
/// awaited; or, if the client closed first, its code echoed.
pub(crate) async fn close(
    mut writer: Writer,
    reader: &mut Reader,
    ours: Option<(u16, String)>,
    client_closed: Option<u16>,
) {
    if let Some((code, reason)) = ours {
        let sent = tokio::time::timeout(CLOSE_TIMEOUT, writer.close(code, &reason)).await;
        if matches!(sent, Ok(Ok(()))) && client_closed.is_none() {
            // Closing handshake: read (and drop) until the client answers, so
            // it is not reset while still sending and gets to see the code.
            let drain = async { while let Some(Ok(_)) = reader.next().await {} };
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE, drain).await;
        }
    } else if let Some(code) = client_closed {
        // The client closed first: echo its code (RFC 6455 §5.5.1).
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close(code, "")).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
}

/// Waits until nothing is queued for the socket and nothing new arrived for
/// [`SETTLE_QUIET`], at most [`SETTLE_MAX`].
async fn settle(outbox: &Outbox) {
    let deadline = tokio::time::Instant::now() + SETTLE_MAX;
    let mut before = outbox.activity().1;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE_QUIET).await;
        let (empty, pushed) = outbox.activity();
        if empty && pushed == before {
            return;
        }
        before = pushed;
    }
}

/// Writes queued frames, many per syscall, until the outbox ends (then hands
/// the writer back) or a write fails (None). A socket that wrote nothing for
/// a whole ping interval gets a ping, so proxies keep idle connections open;
/// the timer is reset once per interval, not per frame.
pub(crate) async fn write_frames(
    mut writer: Writer,
    outbox: Arc<Outbox>,
    ping_interval: Duration,
) -> Option<Writer> {
    let ping = tokio::time::sleep(ping_interval);
    tokio::pin!(ping);
    let mut wrote = false;
    // Empty between writes: an idle socket holds no batch buffer.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = outbox.recv_many(&mut batch, WRITE_BATCH) => {
                if batch.is_empty() {
                    return Some(writer);
                }
                // Let the fan-out that woke us queue more before the
                // syscall: under load one write then carries several
                // batches; when idle this costs one reschedule.
                if batch.len() < WRITE_BATCH {
                    tokio::task::yield_now().await;
                    outbox.try_take(&mut batch, WRITE_BATCH);
                }
                write_batch(&mut writer, std::mem::take(&mut batch).into_iter()).await.ok()?;
                wrote = true;
            }
            () = &mut ping => {
                if !wrote {
                    writer.ping().await.ok()?;
                }
                wrote = false;
                ping.as_mut().reset(tokio::time::Instant::now() + ping_interval);
            }
        }
    }
}

/// Writes a batch in order: runs of frames as one vectored write, pongs
/// between them.
async fn write_batch(
    writer: &mut Writer,
    batch: impl Iterator<Item = Outgoing>,
) -> std::io::Result<()> {
    let mut run: Vec<Frames> = Vec::new();
    for outgoing in batch {
        match outgoing {
            Outgoing::Frames(frames) => run.push(frames),
            Outgoing::Pong(payload) => {
                writer.text(run.iter().flat_map(|f| f.iter())).await?;
                run.clear();
                writer.pong(&payload).await?;
            }
            Outgoing::Binary(payload) => {
                writer.text(run.iter().flat_map(|f| f.iter())).await?;
                run.clear();
                writer.binary(&payload).await?;
            }
        }
    }
    writer.text(run.iter().flat_map(|f| f.iter())).await
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

/// Reads until the client closes (its close code is returned) or must be
/// closed (the reason goes to `signal`). Pings are answered by the writer.
async fn read_frames<S>(
    stream: &mut S,
    conn: ConnId,
    link: &LinkHandle,
    handle: &ConnHandle,
    signal: &CloseSignal,
    env: &SessionEnv,
) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut limiter = RateLimiter::new(env.rate_limit, env.rate_burst);
    let refuse = |code: ErrorCode, message: &str, id: Option<&str>| {
        env.metrics.frames_rejected.inc();
        handle.send_error(code, message, id.unwrap_or_default());
    };
    while let Some(message) = stream.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => {
                refuse(
                    ErrorCode::InvalidMessage,
                    "binary frames are not supported; send JSON text",
                    None,
                );
                continue;
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(NORMAL_CLOSURE, |f| u16::from(f.code));
                // 1005/1006/1015 are never sent in a frame; answer 1000.
                return Some(if matches!(code, 1005 | 1006 | 1015) {
                    NORMAL_CLOSURE
                } else {
                    code
                });
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
        let received = tokio::time::Instant::now();
        env.metrics.frames_in.inc();
        match limiter.check() {
            Verdict::Allow => {}
            Verdict::Limited => {
                env.metrics.rate_limited.inc();
                let id = client::request_id(&text);
                refuse(
                    ErrorCode::RateLimited,
                    "too many messages; this one was dropped",
                    id.as_deref(),
                );
                continue;
            }
            Verdict::Flood => {
                env.metrics.rate_limited.inc();
                signal.trigger(close_code::POLICY, "message flood");
                return None;
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
                resent: false,
            }),
            Ok(ClientFrame::Name { name }) => gateway_frame::Kind::SetName(SetName { conn, name }),
            Ok(ClientFrame::Typing) => gateway_frame::Kind::Typing(Typing { conn }),
            Ok(ClientFrame::Ping) => {
                handle.send(server::pong());
                continue;
            }
            Ok(ClientFrame::History { before, limit }) => {
                gateway_frame::Kind::History(HistoryRequest {
                    conn,
                    before: before.unwrap_or(0),
                    limit,
                })
            }
            Err(error) => {
                refuse(error.code, &error.message, error.id.as_deref());
                continue;
            }
        };
        if !Box::pin(link.send(LinkCmd::Frame { conn, kind, received })).await {
            signal.trigger(close_code::RESTART, "room moved; reconnect");
            return None;
        }
    }
    None
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
