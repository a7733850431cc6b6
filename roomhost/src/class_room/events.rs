//! What a class room does with each command and frame: gateways attach and
//! detach, handshakes run the class's `fetch`, socket messages and closes
//! run its handlers, sockets kept by gateways are re-announced after moves.

use rooms_classes::{HttpRequest, Payload, PoolError, Restored};
use rooms_proto::host::{
    Attached, ClassSocket, CloseConn, Handshake, HandshakeReply, SocketData, gateway_frame,
    host_frame, socket_data,
};
use rooms_proto::server::close_code;

use super::gate::Output;
use super::*;
use crate::room::{RoomError, RoomInfo};

impl ClassRoom {
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { gateway, name, rejoins, tx, .. } => {
                if let Some(moving) = &mut self.moving {
                    moving.3.push(tx);
                    return;
                }
                let back = self.away.back(&name);
                self.book.attached(gateway, name, rejoins);
                self.gateways.insert(gateway, tx);
                self.send(gateway, host_frame::Kind::Attached(Attached {}));
                // The same gateway again: its sockets move to this stream,
                // and what the class sent them meanwhile goes first.
                if let Some((old, outbox)) = back {
                    self.rebind(old, gateway);
                    for kind in outbox {
                        self.send(gateway, kind);
                    }
                }
            }
            Command::Detach { gateway } => {
                if let Some(moving) = &mut self.moving {
                    moving.0.retain(|g| *g != gateway);
                }
                self.gateways.remove(&gateway);
                let name = self.book.name(gateway);
                self.book.detached(gateway);
                let has_sockets = self.by_conn.keys().any(|(g, _)| *g == gateway);
                match name {
                    // Its sockets wait for it (see `away`).
                    Some(name) if has_sockets && self.moving.is_none() => {
                        self.away.left(gateway, name);
                    }
                    _ => self.sockets_gone(gateway).await,
                }
            }
            Command::Frame { gateway, frame } => self.frame(gateway, frame).await,
            Command::Publish { reply, .. } => {
                let refusal = "this room runs a room class: call its methods instead of publishing";
                let _ = reply.send(Err(RoomError::Unavailable(refusal.into())));
            }
            Command::Info { reply } => {
                let connections = u32::try_from(self.sockets.len()).unwrap_or(u32::MAX);
                let _ = reply.send(RoomInfo { connections, users: 0, seq: 0 });
            }
            Command::Kick { reply, .. } => {
                let _ = reply.send(0);
            }
            Command::Handoff { target } => self.begin_move(target),
            // The alarm index says something is due: the turn loop fires
            // it. If nothing is (the index was early: a commit that lowered
            // it failed), the index learns the truth, so that it stops
            // waking the room.
            Command::Wake => {
                if self.load_book().await
                    && self.alarms.next().is_none_or(|at| at > super::alarms::now_ms())
                    && let Err(error) = self
                        .renewer
                        .within_lease(self.store.index_alarm(&self.id, self.alarms.next()))
                        .await
                {
                    tracing::debug!(room.id = %self.id, %error, "correcting the alarm index failed");
                }
            }
            Command::Invoke { method, args_json, reply } => {
                let answer = match self.instance().await {
                    Some(instance) => {
                        let outcome = instance.invoke(method, args_json).await;
                        match self.apply(outcome) {
                            Some(Ok(result)) => Ok(result),
                            Some(Err(message)) if message.contains(rooms_classes::NOT_A_METHOD) => {
                                Err(RoomError::Refused(message))
                            }
                            Some(Err(exception)) => Err(RoomError::Threw(exception)),
                            None => Err(RoomError::Unavailable("the room's class failed".into())),
                        }
                    }
                    None => Err(RoomError::Unavailable("the room's class did not start".into())),
                };
                // After what the call sent, once its writes are stored.
                self.emit(Output::Reply(reply, answer));
            }
        }
    }

    async fn frame(&mut self, gateway: GatewayId, frame: gateway_frame::Kind) {
        use gateway_frame::Kind;
        match frame {
            Kind::Handshake(handshake) => self.handshake(gateway, handshake).await,
            Kind::SocketData(data) => {
                let tag = data.tag;
                if self.instance().await.is_none() {
                    return; // unanswered: the gateway sends it again if it must
                }
                if !(data.resent && self.book.already_ran(gateway, tag)) {
                    self.message(gateway, data).await;
                }
                if tag != 0 {
                    self.emit(Output::Ran(gateway, tag));
                }
            }
            Kind::SocketClosed(closed) => {
                self.closed(gateway, closed.conn, closed.code, &closed.reason, closed.clean).await;
            }
            Kind::Leave(leave) => self.closed(gateway, leave.conn, 1006, "", false).await,
            Kind::Join(join) => match join.socket {
                // Kept by the gateway across a move: the room knows it again.
                Some(state) => {
                    self.book.rejoined(gateway);
                    // One the room did not know: the running instance does
                    // not either, and the next event starts one that does.
                    if self.register(gateway, join.conn, state) {
                        self.drop_instance("a socket came back");
                    }
                }
                None => {
                    let reason =
                        "this room runs a room class; connect through a gateway that runs them";
                    let close = CloseConn {
                        conn: join.conn,
                        code: close_code::SERVER_ERROR.into(),
                        reason: reason.into(),
                    };
                    self.send(gateway, host_frame::Kind::Close(close));
                }
            },
            Kind::Drained(_) => {
                if let Some(moving) = &mut self.moving {
                    moving.0.retain(|g| *g != gateway);
                }
            }
            Kind::Open(_)
            | Kind::Chat(_)
            | Kind::SetName(_)
            | Kind::Typing(_)
            | Kind::History(_) => {}
        }
    }

    /// Runs the class's `webSocketMessage` for a socket's message.
    async fn message(&mut self, gateway: GatewayId, data: SocketData) {
        let Some(socket) = self.by_conn.get(&(gateway, data.conn)).copied() else { return };
        let payload = match data.data {
            Some(socket_data::Data::Text(text)) => Payload::Text(text),
            Some(socket_data::Data::Binary(bytes)) => Payload::Binary(bytes.to_vec()),
            None => return,
        };
        self.book.run(gateway, data.tag);
        let outcome = match &self.instance {
            Some(instance) => instance.message(socket, payload).await,
            None => Err(PoolError::Stopped),
        };
        self.apply(outcome);
    }

    /// Runs the class's `fetch` for a client's handshake and answers it.
    async fn handshake(&mut self, gateway: GatewayId, handshake: Handshake) {
        let conn = handshake.conn;
        let answer = |status: u32, body: &str| HandshakeReply {
            conn,
            status,
            headers: Vec::new(),
            body: Some(body.to_owned()),
        };
        if self.sockets.len() >= MAX_SOCKETS {
            let reply = answer(503, "room is full");
            return self.emit(Output::Handshake(gateway, reply));
        }
        if self.instance().await.is_none() {
            let reply = answer(503, "room unavailable; retry");
            return self.emit(Output::Handshake(gateway, reply));
        }
        let socket = self.next_socket;
        self.next_socket += 1;
        let request = HttpRequest {
            url: handshake.url,
            method: handshake.method,
            headers: handshake.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: handshake.body,
        };
        // Known while the class answers, so that its accept finds the socket.
        self.by_conn.insert((gateway, conn), socket);
        self.accepting = Some((socket, gateway, conn));
        let outcome = match &self.instance {
            Some(instance) => instance.fetch(socket, request).await,
            None => Err(PoolError::Stopped),
        };
        let applied = self.apply(outcome);
        self.accepting = None;
        let reply = match applied {
            Some(Ok(response)) => HandshakeReply {
                conn,
                status: u32::from(response.status),
                headers: response
                    .headers
                    .into_iter()
                    .map(|(name, value)| rooms_proto::host::Header { name, value })
                    .collect(),
                body: response.body,
            },
            Some(Err(_)) => answer(500, "the room's class failed"),
            None => answer(503, "room unavailable; retry"),
        };
        if !self.sockets.contains_key(&socket) {
            self.by_conn.remove(&(gateway, conn));
        }
        self.emit(Output::Handshake(gateway, reply));
    }

    /// A socket closed: the class hears it, the room forgets it.
    async fn closed(
        &mut self,
        gateway: GatewayId,
        conn: ConnId,
        code: u32,
        reason: &str,
        clean: bool,
    ) {
        let Some(socket) = self.by_conn.remove(&(gateway, conn)) else { return };
        if self.sockets.remove(&socket).is_none() {
            return;
        }
        let code = u16::try_from(code).unwrap_or(1006);
        if let Some(instance) = self.instance().await {
            let outcome = instance.close(socket, code, reason.to_owned(), clean).await;
            self.apply(outcome);
        }
    }

    /// A socket with what the room last said of it.
    /// True if the room did not know it; one it knows (its gateway was
    /// away) keeps what the room last said of it, which is newer.
    fn register(&mut self, gateway: GatewayId, conn: ConnId, state: ClassSocket) -> bool {
        if let Some(socket) = self.by_conn.get(&(gateway, conn))
            && self.sockets.contains_key(socket)
        {
            return false;
        }
        let socket = self.next_socket;
        self.next_socket += 1;
        self.by_conn.insert((gateway, conn), socket);
        let ClassSocket { tags, attachment, hibernatable } = state;
        self.sockets.insert(socket, Socket { gateway, conn, tags, attachment, hibernatable });
        true
    }

    /// The sockets of stream `old` are now on stream `new` (same gateway).
    fn rebind(&mut self, old: GatewayId, new: GatewayId) {
        let moved: Vec<(ConnId, u64)> = self
            .by_conn
            .iter()
            .filter(|((g, _), _)| *g == old)
            .map(|((_, conn), socket)| (*conn, *socket))
            .collect();
        for (conn, socket) in moved {
            self.by_conn.remove(&(old, conn));
            self.by_conn.insert((new, conn), socket);
            if let Some(known) = self.sockets.get_mut(&socket) {
                known.gateway = new;
            }
        }
    }

    /// Every socket of a stream is gone: the class hears each close (1006).
    async fn sockets_gone(&mut self, gateway: GatewayId) {
        let gone: Vec<ConnId> =
            self.by_conn.keys().filter(|(g, _)| *g == gateway).map(|(_, c)| *c).collect();
        for conn in gone {
            self.closed(gateway, conn, 1006, "", false).await;
        }
    }

    /// Gateways whose grace ended without them: their sockets are gone.
    pub(super) async fn gone_for_good(&mut self) {
        for gateway in self.away.expired() {
            tracing::info!(room.id = %self.id, gateway, "a gateway's sockets did not come back; closed");
            self.sockets_gone(gateway).await;
        }
        self.kick();
    }

    /// The running instance, started from storage and the room's sockets if
    /// there is none. None: it could not start (logged).
    pub(super) async fn instance(&mut self) -> Option<&InstanceHandle> {
        if self.instance.is_none() {
            // What the last instance wrote is stored before storage loads.
            self.flush().await;
            if !self.load_book().await {
                return None;
            }
            let storage = match self.renewer.within_lease(self.store.load_storage(&self.id)).await {
                Ok(storage) => storage,
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "loading the class room's storage failed");
                    return None;
                }
            };
            let restored = self
                .sockets
                .iter()
                .filter(|(_, s)| s.hibernatable)
                .map(|(id, s)| Restored {
                    socket: *id,
                    tags: s.tags.clone(),
                    attachment: s.attachment.clone(),
                })
                .collect();
            let class = Arc::clone(&self.class);
            let started = class
                .pool
                .start(
                    Arc::clone(&class.bundle),
                    self.id.as_str(),
                    Arc::clone(&class.env),
                    rooms_classes::Stored { entries: storage, alarms: self.alarms.list() },
                    restored,
                )
                .await;
            match started {
                Ok((instance, outcome)) => {
                    self.class.metrics.start_seconds.observe(outcome.elapsed.as_secs_f64());
                    self.instance = Some(Live::new(instance, &self.class.metrics));
                    self.apply(Ok(outcome));
                }
                Err(error) => {
                    tracing::error!(room.id = %self.id, %error, "the room's class did not start");
                    return None;
                }
            }
        }
        self.instance.as_deref()
    }
}
