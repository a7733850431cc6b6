//! A link's side of class rooms: the room's kind as its owner announced
//! it, handshakes waiting for the class's answer, and the class sockets the
//! gateway keeps — with what the room said of them (tags, attachment), to
//! re-announce them to the room's next owner.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rooms_proto::host::{
    ClassSocket, CloseConn, Handshake, HandshakeReply, RoomKind, SocketSend, SocketState,
    gateway_frame, socket_send,
};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::actor::{Link, frame};
use crate::conn::{ConnHandle, ConnId, close_code};

/// Handshakes one link waits for at most; past it a handshake is answered
/// 503.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// A class room socket of this gateway.
struct ClassLocal {
    handle: ConnHandle,
    /// What the room last said of it (None until accepted).
    state: Option<ClassSocket>,
}

struct Pending {
    handle: ConnHandle,
    reply: oneshot::Sender<HandshakeReply>,
    state: Option<ClassSocket>,
}

#[derive(Default)]
pub(super) struct ClassSide {
    /// The room's kind, once its owner said.
    kind: Option<RoomKind>,
    /// Asked for the kind before it was known (bounded by the handshakes in
    /// flight, one per connecting client).
    waiting: Vec<oneshot::Sender<RoomKind>>,
    /// Handshakes sent to the room, by connection, with the state the room
    /// gave the socket while answering (it comes before the answer).
    pending: HashMap<ConnId, Pending>,
    sockets: HashMap<ConnId, ClassLocal>,
}

impl ClassSide {
    /// Nothing keeps the link for class rooms.
    pub(super) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.pending.is_empty() && self.sockets.is_empty()
    }

    /// The sockets to re-announce on a new stream, with their state.
    pub(super) fn rejoins(&self) -> impl Iterator<Item = (ConnId, ClassSocket)> + '_ {
        self.sockets.iter().filter_map(|(conn, local)| Some((*conn, local.state.clone()?)))
    }

    /// Closes every socket (the room is gone) and refuses waiting handshakes.
    pub(super) fn give_up(&mut self) {
        for local in self.sockets.values() {
            local.handle.close(close_code::RESTART, "room unavailable; reconnect");
        }
        self.sockets.clear();
        for (conn, pending) in self.pending.drain() {
            let _ = pending.reply.send(refusal(conn, 503, "room unavailable; retry"));
        }
        self.waiting.clear();
    }
}

fn refusal(conn: ConnId, status: u32, body: &str) -> HandshakeReply {
    HandshakeReply { conn, status, headers: Vec::new(), body: Some(body.to_owned()) }
}

impl Link {
    /// Someone wants to know the room's kind.
    pub(super) fn ask_kind(&mut self, reply: oneshot::Sender<RoomKind>) {
        match &self.class.kind {
            Some(kind) => {
                let _ = reply.send(kind.clone());
            }
            None if self.class.waiting.len() < MAX_PENDING_HANDSHAKES => {
                self.class.waiting.push(reply)
            }
            None => {}
        }
    }

    /// The owner said what the room is.
    pub(super) fn kind_known(&mut self, kind: RoomKind) {
        for reply in self.class.waiting.drain(..) {
            let _ = reply.send(kind.clone());
        }
        self.class.kind = Some(kind);
    }

    /// A client's handshake goes to the room's class.
    pub(super) fn handshake(
        &mut self,
        handshake: Handshake,
        handle: ConnHandle,
        reply: oneshot::Sender<HandshakeReply>,
    ) {
        let conn = handshake.conn;
        if self.class.pending.len() >= MAX_PENDING_HANDSHAKES {
            let _ = reply.send(refusal(conn, 503, "too many handshakes in flight; retry"));
            return;
        }
        self.class.pending.insert(conn, Pending { handle, reply, state: None });
        self.forward(conn, frame(gateway_frame::Kind::Handshake(handshake)));
    }

    /// A class socket's message or close goes to the room. A message is
    /// tagged and kept until the room answers its tag, to be sent again if
    /// its stream breaks first.
    pub(super) fn socket_frame(&mut self, conn: ConnId, mut kind: gateway_frame::Kind) {
        match &mut kind {
            gateway_frame::Kind::SocketClosed(_) => {
                self.class.sockets.remove(&conn);
            }
            gateway_frame::Kind::SocketData(data) => data.tag = self.links.tag(),
            _ => {}
        }
        let message = frame(kind);
        self.track(&message);
        self.forward(conn, message);
    }

    /// The class answered a handshake: 101 makes the socket the room's.
    pub(super) fn handshake_answered(&mut self, reply: HandshakeReply) {
        let Some(Pending { handle, reply: answer, state }) = self.class.pending.remove(&reply.conn)
        else {
            return;
        };
        if reply.status == 101 {
            self.class.sockets.insert(reply.conn, ClassLocal { handle, state });
        }
        let _ = answer.send(reply);
    }

    /// What the room says of a socket: kept, to re-announce it on the next
    /// stream (also when it comes while the handshake is being answered).
    pub(super) fn socket_state(&mut self, state: SocketState) {
        if let Some(local) = self.class.sockets.get_mut(&state.conn) {
            local.state = state.socket;
        } else if let Some(pending) = self.class.pending.get_mut(&state.conn) {
            pending.state = state.socket;
        }
    }

    /// One payload for several of this gateway's sockets.
    pub(super) fn socket_send(&mut self, send: SocketSend) {
        let metrics = &self.links.metrics;
        match send.data {
            Some(socket_send::Data::Text(text)) => {
                let frames: crate::conn::Frames = Arc::new([Utf8Bytes::from(text)]);
                for conn in send.conns {
                    if let Some(local) = self.class.sockets.get(&conn) {
                        local.handle.deliver(Arc::clone(&frames));
                        metrics.frames_out.inc();
                    }
                }
            }
            Some(socket_send::Data::Binary(bytes)) => {
                let bytes: Bytes = bytes;
                for conn in send.conns {
                    if let Some(local) = self.class.sockets.get(&conn) {
                        local.handle.deliver_binary(bytes.clone());
                        metrics.frames_out.inc();
                    }
                }
            }
            None => {}
        }
    }

    /// The room closes one of its sockets. False: not a class socket.
    pub(super) fn socket_close(&mut self, close: &CloseConn) -> bool {
        let Some(local) = self.class.sockets.remove(&close.conn) else { return false };
        let code = u16::try_from(close.code).unwrap_or(close_code::SERVER_ERROR);
        local.handle.close(code, close.reason.clone());
        true
    }
}
