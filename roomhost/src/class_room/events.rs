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
                self.book.attached(gateway, name, rejoins);
                self.gateways.insert(gateway, tx);
                self.send(gateway, host_frame::Kind::Attached(Attached {}));
            }
            Command::Detach { gateway } => {
                if let Some(moving) = &mut self.moving {
                    moving.0.retain(|g| *g != gateway);
                }
                self.gateways.remove(&gateway);
                self.book.detached(gateway);
                let gone: Vec<ConnId> =
                    self.by_conn.keys().filter(|(g, _)| *g == gateway).map(|(_, c)| *c).collect();
                for conn in gone {
                    self.closed(gateway, conn, 1006, "", false).await;
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
            // The alarm index says something is due: the turn loop fires it.
            Command::Wake => {}
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
                    self.register(gateway, join.conn, state);
                    // A running instance does not know it: the next event
                    // starts one that does.
                    self.drop_instance("a socket came back");
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
    fn register(&mut self, gateway: GatewayId, conn: ConnId, state: ClassSocket) {
        let socket = match self.by_conn.get(&(gateway, conn)) {
            Some(socket) => *socket,
            None => {
                let socket = self.next_socket;
                self.next_socket += 1;
                self.by_conn.insert((gateway, conn), socket);
                socket
            }
        };
        let ClassSocket { tags, attachment, hibernatable } = state;
        self.sockets.insert(socket, Socket { gateway, conn, tags, attachment, hibernatable });
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
            let storage = match self.store.load_storage(&self.id).await {
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
