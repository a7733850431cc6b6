//! What a room does with each command and client frame: attach and detach
//! gateways, joins and leaves with presence, chats, names, typing, history
//! requests, operator publishes, kicks and handoffs.

use super::*;

impl Room {
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { gateway, tx, resume_after, writes_welcome, known_users, .. } => {
                if let Some(moving) = &mut self.moving {
                    moving.deferred.push(tx);
                    return;
                }
                // Staged events go to the gateways that were here before; the
                // newcomer gets them through its replay.
                self.flush().await;
                self.gateways.insert(gateway, GatewayStream { tx, writes_welcome });
                if let Some(after) = resume_after {
                    self.replay(gateway, after).await;
                }
                self.send(gateway, host_frame::Kind::Attached(Attached {}));
                if writes_welcome {
                    self.send_roster(gateway);
                }
                self.expect_back(known_users);
            }
            Command::Detach { gateway } => {
                if let Some(moving) = &mut self.moving {
                    moving.waiting.retain(|g| *g != gateway);
                }
                self.detach(gateway);
            }
            Command::Frame { gateway, frame } => self.frame(gateway, frame).await,
            Command::Publish { data, persist, reply } => {
                let time = server::timestamp(SystemTime::now());
                if !persist {
                    self.staged.outputs.push(Output::All(server::system(0, &data, &time)));
                    let _ = reply.send(Ok(0));
                    return;
                }
                let Some(seq) = self.next_seq().await else {
                    let _ = reply.send(Err(RoomError::Unavailable("store unreachable".into())));
                    return;
                };
                self.stage(Event { seq, frame: server::system(seq, &data, &time) });
                self.staged.replies.push((reply, seq));
            }
            Command::Info { reply } => {
                self.flush().await;
                let _ = reply.send(RoomInfo {
                    connections: self.conns.len() as u32,
                    users: self.presence.len() as u32,
                    seq: self.seq,
                });
            }
            Command::Kick { user, reason, reply } => {
                self.flush().await;
                let targets: Vec<(GatewayId, ConnId)> =
                    self.conns.iter().filter(|(_, u)| ***u == *user).map(|(k, _)| *k).collect();
                for (gateway, conn) in &targets {
                    let close = CloseConn {
                        conn: *conn,
                        code: close_code::KICKED.into(),
                        reason: reason.clone(),
                    };
                    self.send(*gateway, host_frame::Kind::Close(close));
                }
                let _ = reply.send(targets.len() as u32);
            }
            Command::Invoke { reply, .. } => {
                let refusal = format!("room {} runs no room class", self.id);
                let _ = reply.send(Err(RoomError::Refused(refusal)));
            }
            // A chat room has no alarms.
            Command::Wake => {}
            Command::Handoff { target } => {
                self.flush().await;
                self.begin_move(target, Drain::Gateways);
            }
        }
    }

    pub(super) async fn frame(&mut self, gateway: GatewayId, frame: gateway_frame::Kind) {
        use gateway_frame::Kind;
        match frame {
            Kind::Open(_) | Kind::SocketData(_) | Kind::SocketClosed(_) => {}
            Kind::Handshake(handshake) => {
                // A gateway that takes this room for a class room.
                let reply = HandshakeReply {
                    conn: handshake.conn,
                    status: 404,
                    headers: Vec::new(),
                    body: Some(format!("room {} runs no room class", self.id)),
                };
                self.send(gateway, host_frame::Kind::HandshakeReply(reply));
            }
            Kind::Drained(_) => {
                if let Some(moving) = &mut self.moving {
                    moving.waiting.retain(|g| *g != gateway);
                }
            }
            Kind::Join(join) => self.join(gateway, join).await,
            Kind::Leave(leave) => self.leave(gateway, leave.conn),
            Kind::Chat(chat) => {
                let received = Instant::now();
                let Some(user) = self.conns.get(&(gateway, chat.conn)).cloned() else {
                    return;
                };
                if let Err(e) = validate_text(&chat.text) {
                    let refusal = server::error_for(e.code, &e.message, &chat.id);
                    return self.answer(gateway, chat.conn, chat.tag, vec![refusal]);
                }
                if !chat.id.is_empty() && self.dedup.get(&user, &chat.id).is_some() {
                    // A resend. Once the original is stored, the sender gets
                    // it again and nobody else sees it twice (if its commit
                    // failed instead, this one is stored normally). A
                    // gateway's own resend after a broken stream is answered
                    // with its tag alone: its resume replays the event.
                    self.flush().await;
                    if let Some(stored) = self.dedup.get(&user, &chat.id) {
                        let original: Vec<Bytes> = if chat.resent {
                            Vec::new()
                        } else {
                            self.recent
                                .iter()
                                .filter(|e| e.seq == stored)
                                .map(|e| e.frame.clone())
                                .collect()
                        };
                        return self.answer(gateway, chat.conn, chat.tag, original);
                    }
                }
                let Some(seq) = self.next_seq().await else {
                    return self.unavailable(
                        gateway,
                        chat.conn,
                        Refused::Chat { id: &chat.id, tag: chat.tag },
                    );
                };
                // The error for a failed commit names the client's id, if any.
                let (id, client_id) = if chat.id.is_empty() {
                    (format!("{}-{seq}", self.epoch), None)
                } else {
                    let client_id: Arc<str> = chat.id.as_str().into();
                    self.dedup.insert(Arc::clone(&user), Arc::clone(&client_id), seq);
                    self.staged.client_ids.push((Arc::clone(&user), client_id));
                    (chat.id, Some(self.staged.client_ids.len() - 1))
                };
                let time = server::timestamp(SystemTime::now());
                let frame =
                    server::chat(seq, &id, &user, self.display_name(&user), &chat.text, &time);
                self.stage(Event { seq, frame });
                let write = Write::Chat { client_id, tag: chat.tag };
                self.staged.writers.push(Writer { gateway, conn: chat.conn, write });
                let span = (!chat.traceparent.is_empty()).then(|| {
                    let span = tracing::info_span!("room.chat", room.id = %self.id, seq);
                    rooms_telemetry::propagation::set_parent(&span, &chat.traceparent);
                    span
                });
                self.staged.origins.push(Origin { gateway, tag: chat.tag, received, _span: span });
            }
            Kind::SetName(set) => {
                let Some(user) = self.conns.get(&(gateway, set.conn)).cloned() else {
                    return;
                };
                let name = match validate_name(&set.name) {
                    Ok(name) => name,
                    Err(e) => {
                        return self.direct(
                            gateway,
                            set.conn,
                            vec![server::error(e.code, &e.message)],
                        );
                    }
                };
                let Some(seq) = self.next_seq().await else {
                    return self.unavailable(gateway, set.conn, Refused::Name);
                };
                let time = server::timestamp(SystemTime::now());
                self.stage(Event { seq, frame: server::name(seq, &user, &name, &time) });
                self.staged.commit.names.push((user.to_string(), name));
                self.roster_renamed(&user);
                self.staged.writers.push(Writer { gateway, conn: set.conn, write: Write::Name });
            }
            Kind::Typing(typing) => {
                let Some(user) = self.conns.get(&(gateway, typing.conn)) else {
                    return;
                };
                let frame = server::typing(user);
                self.staged.outputs.push(Output::Except { gateway, conn: typing.conn, frame });
            }
            Kind::History(request) => {
                self.flush().await;
                let frames = self.history_page(request.before, request.limit).await;
                self.direct(gateway, request.conn, frames);
            }
        }
    }

    pub(super) async fn join(&mut self, gateway: GatewayId, join: rooms_proto::host::Join) {
        self.flush().await;
        let Ok(user) = UserId::parse(&join.user_id) else {
            let close = CloseConn {
                conn: join.conn,
                code: close_code::POLICY.into(),
                reason: "invalid user id".into(),
            };
            return self.send(gateway, host_frame::Kind::Close(close));
        };
        if self.conns.len() >= MAX_CONNS_PER_ROOM {
            let close = CloseConn {
                conn: join.conn,
                code: close_code::TRY_AGAIN_LATER.into(),
                reason: "room is full".into(),
            };
            return self.send(gateway, host_frame::Kind::Close(close));
        }
        let user: Arc<str> = match self.presence.get_key_value(user.as_str()) {
            Some((present, _)) => Arc::clone(present),
            None => Arc::from(user.as_str()),
        };
        if let Some(previous) = self.conns.insert((gateway, join.conn), Arc::clone(&user)) {
            self.release(&previous);
        }
        let count = self.presence.entry(Arc::clone(&user)).or_default();
        *count += 1;
        let arrived = *count == 1;
        if arrived {
            self.emit(); // a replaced connection's `leave` goes first
            // Back after everyone was told it left: everyone is told.
            let rejoined = join.rejoin && !self.came_back(&user);
            self.accounted_for(&user);
            self.arrival(gateway, join.conn, &user, rejoined);
        }
        if join.rejoin {
            // Back after a move: it already has everything up to the gateway's
            // resume point, and those who were in the room with it know it
            // is here (those welcomed here before it came back were told
            // just now).
            return;
        }
        let history = self.join_history(join.since, &join.epoch).await;
        self.welcome(gateway, join.conn, &user, history);
    }

    pub(super) fn leave(&mut self, gateway: GatewayId, conn: ConnId) {
        if let Some(user) = self.conns.remove(&(gateway, conn)) {
            self.release(&user);
        }
    }

    /// One connection of `user` is gone; announce `leave` if it was the last
    /// (unless the room is moving: its connections are not leaving, they
    /// follow it).
    pub(super) fn release(&mut self, user: &str) {
        let Some(count) = self.presence.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.presence.remove(user);
            self.roster_absent(user);
            if self.moving.is_some() {
                return;
            }
            self.accounted_for(user);
            let frame = server::leave(user, self.display_name(user));
            self.staged.outputs.push(Output::Presence(frame));
        }
    }

    pub(super) fn detach(&mut self, gateway: GatewayId) {
        self.gateways.remove(&gateway);
        let gone: Vec<ConnId> =
            self.conns.keys().filter(|(g, _)| *g == gateway).map(|(_, c)| *c).collect();
        for conn in gone {
            self.leave(gateway, conn);
        }
    }
}
