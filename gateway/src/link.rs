//! Room links: one gRPC stream per (gateway, room), multiplexing every local
//! connection in that room. A link is an actor owning the stream and the map
//! of local connections; it forwards client frames upstream and fans the
//! roomhost's pre-serialized frames out to local sockets, sharing the bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rooms_proto::host::{GatewayFrame, HostFrame, Join, Leave, Open, gateway_frame, host_frame};
use rooms_proto::{RoomId, UserId, client::ErrorCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::Streaming;

use crate::conn::{ConnHandle, ConnId, Delivery, Frames, close_code};
use crate::metrics::Metrics;
use crate::router::Router;

/// Capacity of a link's command channel (client frames, joins, leaves);
/// a client sending into a full channel waits.
pub const LINK_QUEUE: usize = 1024;
/// Frames queued towards the roomhost; past it a client frame is refused
/// with `unavailable`.
pub const UPSTREAM_QUEUE: usize = 4096;
/// A link without connections closes its stream after this long.
pub const LINGER: Duration = Duration::from_secs(5);
/// Longest wait for a roomhost to accept a room stream.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
const DISPATCH_ATTEMPTS: usize = 4;

pub enum LinkCmd {
    Join { conn: ConnId, user: UserId, since: Option<u64>, epoch: String, handle: ConnHandle },
    Leave { conn: ConnId },
    Frame { conn: ConnId, kind: gateway_frame::Kind },
}

#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<LinkCmd>,
    generation: u64,
}

impl LinkHandle {
    /// Sends a command; false when the link has stopped.
    pub async fn send(&self, cmd: LinkCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("room link unavailable")]
pub struct LinkUnavailable;

/// Every room link of this gateway.
pub struct Links {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    active: Mutex<HashMap<RoomId, LinkHandle>>,
    generation: AtomicU64,
}

impl Links {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, gateway_id: String) -> Arc<Self> {
        Arc::new(Self {
            router,
            metrics,
            gateway_id,
            active: Mutex::default(),
            generation: AtomicU64::new(1),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn handle(self: &Arc<Self>, room: &RoomId) -> LinkHandle {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = active.get(room) {
            return handle.clone();
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let handle = LinkHandle { tx, generation };
        active.insert(room.clone(), handle.clone());
        drop(active);
        self.metrics.room_links.inc();
        tokio::spawn(Link::run(Arc::clone(self), room.clone(), generation, rx));
        handle
    }

    /// Delivers a command to the room's link, starting one if needed.
    pub async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        mut cmd: LinkCmd,
    ) -> Result<LinkHandle, LinkUnavailable> {
        for _ in 0..DISPATCH_ATTEMPTS {
            let handle = self.handle(room);
            match handle.tx.send(cmd).await {
                Ok(()) => return Ok(handle),
                Err(mpsc::error::SendError(returned)) => {
                    self.remove_if(room, handle.generation);
                    cmd = returned;
                }
            }
        }
        Err(LinkUnavailable)
    }

    fn remove_if(&self, room: &RoomId, generation: u64) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.get(room).is_some_and(|h| h.generation == generation) {
            active.remove(room);
        }
    }
}

/// A local connection in the room.
struct Local {
    handle: ConnHandle,
    /// Set by the connection's `welcome`. Broadcasts that arrive before it
    /// were emitted before the roomhost processed the join, so the welcome
    /// and history already cover them: they are not delivered, and nothing
    /// reaches a client before its `welcome`.
    welcomed: bool,
}

struct Link {
    links: Arc<Links>,
    room: RoomId,
    generation: u64,
    conns: HashMap<ConnId, Local>,
    upstream: mpsc::Sender<GatewayFrame>,
}

fn frame(kind: gateway_frame::Kind) -> GatewayFrame {
    GatewayFrame { kind: Some(kind) }
}

/// The roomhost's bytes as a WebSocket text payload. The roomhost only sends
/// JSON it serialized itself; anything else is dropped.
fn text(bytes: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(bytes).ok()
}

impl Link {
    async fn run(
        links: Arc<Links>,
        room: RoomId,
        generation: u64,
        mut rx: mpsc::Receiver<LinkCmd>,
    ) {
        let (upstream, upstream_rx) = mpsc::channel(UPSTREAM_QUEUE);
        let mut link = Link { links, room, generation, conns: HashMap::new(), upstream };
        match link.open(upstream_rx).await {
            Ok(inbound) => link.serve(&mut rx, inbound).await,
            Err(error) => {
                tracing::warn!(room.id = %link.room, %error, "cannot open room stream");
                link.links.remove_if(&link.room, link.generation);
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    link.refuse(cmd);
                }
            }
        }
        link.links.metrics.room_links.dec();
    }

    async fn open(
        &mut self,
        upstream_rx: mpsc::Receiver<GatewayFrame>,
    ) -> Result<Streaming<HostFrame>, String> {
        let (owner, mut client) = self.links.router.route(&self.room).map_err(|e| e.to_string())?;
        let open = Open { room: self.room.to_string(), gateway_id: self.links.gateway_id.clone() };
        self.upstream
            .try_send(frame(gateway_frame::Kind::Open(open)))
            .map_err(|e| e.to_string())?;
        let response =
            tokio::time::timeout(OPEN_TIMEOUT, client.attach(ReceiverStream::new(upstream_rx)))
                .await
                .map_err(|_| format!("roomhost {owner} did not answer"))?
                .map_err(|status| format!("roomhost {owner}: {}", status.message()))?;
        tracing::debug!(room.id = %self.room, roomhost.addr = %owner, "room stream open");
        Ok(response.into_inner())
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<LinkCmd>, mut inbound: Streaming<HostFrame>) {
        loop {
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.deliver(message),
                    Ok(None) | Err(_) => {
                        tracing::warn!(room.id = %self.room, "room stream ended; closing its sockets");
                        self.close_all(close_code::RESTART, "room moved; reconnect");
                        self.links.remove_if(&self.room, self.generation);
                        rx.close();
                        while let Ok(cmd) = rx.try_recv() {
                            self.refuse(cmd);
                        }
                        return;
                    }
                },
                () = tokio::time::sleep(LINGER), if self.conns.is_empty() => {
                    // Idle: stop. Commands that raced with this go to a new link.
                    self.links.remove_if(&self.room, self.generation);
                    rx.close();
                    while let Ok(cmd) = rx.try_recv() {
                        let _ = self.links.dispatch(&self.room, cmd).await;
                    }
                    return;
                }
            }
        }
    }

    fn command(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Join { conn, user, since, epoch, handle } => {
                self.conns.insert(conn, Local { handle, welcomed: false });
                let join = Join { conn, user_id: user.to_string(), since, epoch };
                self.forward(conn, gateway_frame::Kind::Join(join));
            }
            LinkCmd::Leave { conn } => {
                if self.conns.remove(&conn).is_some() {
                    self.forward(conn, gateway_frame::Kind::Leave(Leave { conn }));
                }
            }
            LinkCmd::Frame { conn, kind } => self.forward(conn, kind),
        }
    }

    /// Queues a frame for the roomhost; a full upstream refuses it.
    fn forward(&mut self, conn: ConnId, kind: gateway_frame::Kind) {
        if self.upstream.try_send(frame(kind)).is_err() {
            self.error(conn, ErrorCode::Unavailable, "gateway overloaded; message not sent");
        }
    }

    fn deliver(&mut self, message: HostFrame) {
        let metrics = &self.links.metrics;
        match message.kind {
            Some(host_frame::Kind::Broadcast(broadcast)) => {
                let frames: Frames = broadcast.frames.into_iter().filter_map(text).collect();
                if frames.is_empty() {
                    return;
                }
                for (conn, local) in &self.conns {
                    if *conn == broadcast.except_conn || !local.welcomed {
                        continue;
                    }
                    match local.handle.deliver(Arc::clone(&frames)) {
                        Delivery::Queued => metrics.frames_out.inc_by(frames.len() as u64),
                        Delivery::Overflow => metrics.send_queue_full.inc(),
                        Delivery::Closed => 0,
                    };
                }
            }
            Some(host_frame::Kind::Direct(direct)) => {
                let Some(local) = self.conns.get_mut(&direct.conn) else { return };
                local.welcomed = true;
                let frames: Frames = direct.frames.into_iter().filter_map(text).collect();
                if local.handle.deliver(Arc::clone(&frames)) == Delivery::Queued {
                    metrics.frames_out.inc_by(frames.len() as u64);
                }
            }
            Some(host_frame::Kind::Close(close)) => {
                if let Some(Local { handle, .. }) = self.conns.get(&close.conn) {
                    let code = u16::try_from(close.code).unwrap_or(close_code::SERVER_ERROR);
                    handle.close(code, close.reason);
                }
            }
            None => {}
        }
    }

    fn error(&self, conn: ConnId, code: ErrorCode, message: &str) {
        if let Some(Local { handle, .. }) = self.conns.get(&conn) {
            handle.send_error(code, message);
        }
    }

    fn close_all(&mut self, code: u16, reason: &str) {
        for local in self.conns.values() {
            local.handle.close(code, reason);
        }
        self.conns.clear();
    }

    /// Answers a command the link can no longer serve.
    fn refuse(&self, cmd: LinkCmd) {
        if let LinkCmd::Join { handle, .. } = cmd {
            handle.send_error(ErrorCode::Unavailable, "room unavailable; retry");
            handle.close(close_code::TRY_AGAIN_LATER, "room unavailable");
        }
    }
}
