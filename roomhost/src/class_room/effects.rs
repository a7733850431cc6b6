//! What a class room does with an event's effects: its storage writes go
//! to the next group commit (fenced by the lease), and its sends, closes and
//! socket states to the gateways — each payload once per gateway — through
//! the output gate (`gate`), so that they leave once the writes before them
//! are stored.

use rooms_classes::{Effect, Outcome, Payload, PoolError};
use rooms_proto::host::{Broadcast, ClassSocket, CloseConn, SocketSend, SocketState, socket_data};

use super::gate::Output;
use super::*;
use crate::store::{StorageWrite, StoreError};

impl ClassRoom {
    /// Applies what an event did. None: nothing of it stands (its instance
    /// failed and is dropped). Its writes are stored by the next commit.
    pub(super) fn apply<T>(
        &mut self,
        outcome: Result<Outcome<T>, PoolError>,
    ) -> Option<Result<T, String>> {
        self.class.metrics.events.inc();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "the room's class failed; its instance starts again from storage");
                self.class.metrics.resets.inc();
                self.drop_instance("failed");
                return None;
            }
        };
        self.class.metrics.event_seconds.observe(outcome.elapsed.as_secs_f64());
        if let Some(bytes) = outcome.stored_bytes {
            self.stored.set(bytes);
        }
        if let Err(exception) = &outcome.result {
            self.class.metrics.exceptions.inc();
            tracing::warn!(room.id = %self.id, %exception, "the room's class threw");
        }
        let mut writes: Vec<StorageWrite> = Vec::new();
        let mut seen = false;
        for effect in &outcome.effects {
            match effect {
                Effect::Put { key, value } => {
                    writes.push(StorageWrite::Put(key.clone(), value.clone()));
                }
                Effect::Delete { key } => writes.push(StorageWrite::Delete(key.clone())),
                Effect::DeleteAll => writes.push(StorageWrite::DeleteAll),
                Effect::Alarm { name, at } => {
                    self.alarms.set(name, *at);
                    writes.push(StorageWrite::Alarm(name.clone(), *at));
                }
                Effect::Accept { socket, .. } => {
                    seen = true;
                    if let Some((_, gateway, _)) = self.accepting.filter(|a| a.0 == *socket) {
                        self.book.has_sockets(gateway);
                    }
                }
                Effect::Send { .. } | Effect::Close { .. } | Effect::Attach { .. } => seen = true,
            }
        }
        // Before anything of the event is seen, the store knows which
        // messages ran (so that none runs twice after a crash) and which
        // gateways have sockets here.
        if (seen || !writes.is_empty()) && self.book.is_dirty() {
            writes.extend(self.book.writes());
        }
        self.gate.write(writes);
        for effect in outcome.effects {
            match effect {
                Effect::Send { sockets, payload } => self.deliver(&sockets, payload),
                Effect::Close { socket, code, reason } => self.close_socket(socket, code, &reason),
                Effect::Accept { socket, tags, hibernatable } => {
                    if let Some((_, gateway, conn)) = self.accepting.filter(|a| a.0 == socket) {
                        let state =
                            ClassSocket { tags: tags.clone(), attachment: None, hibernatable };
                        self.sockets.insert(
                            socket,
                            Socket { gateway, conn, tags, attachment: None, hibernatable },
                        );
                        self.send_class(
                            gateway,
                            host_frame::Kind::SocketState(SocketState {
                                conn,
                                socket: Some(state),
                            }),
                        );
                    }
                }
                Effect::Attach { socket, value } => {
                    // The room takes the attachment when it leaves (after the
                    // writes before it are stored): a failed commit leaves
                    // the socket as it was.
                    let Some(known) = self.sockets.get(&socket) else { continue };
                    let state = ClassSocket {
                        tags: known.tags.clone(),
                        attachment: value,
                        hibernatable: known.hibernatable,
                    };
                    let (gateway, conn) = (known.gateway, known.conn);
                    self.send_class(
                        gateway,
                        host_frame::Kind::SocketState(SocketState { conn, socket: Some(state) }),
                    );
                }
                Effect::Put { .. }
                | Effect::Delete { .. }
                | Effect::DeleteAll
                | Effect::Alarm { .. } => {}
            }
        }
        Some(outcome.result)
    }

    /// One frame per gateway with the payload and that gateway's sockets.
    fn deliver(&mut self, sockets: &[u64], payload: Payload) {
        let mut per_gateway: HashMap<GatewayId, Vec<ConnId>> = HashMap::new();
        for socket in sockets {
            if let Some(known) = self.sockets.get(socket) {
                per_gateway.entry(known.gateway).or_default().push(known.conn);
            }
        }
        let data = match payload {
            Payload::Text(text) => socket_data::Data::Text(text),
            Payload::Binary(bytes) => socket_data::Data::Binary(bytes.into()),
        };
        for (gateway, conns) in per_gateway {
            let data = Some(match &data {
                socket_data::Data::Text(t) => rooms_proto::host::socket_send::Data::Text(t.clone()),
                socket_data::Data::Binary(b) => {
                    rooms_proto::host::socket_send::Data::Binary(b.clone())
                }
            });
            self.send_class(gateway, host_frame::Kind::SocketSend(SocketSend { conns, data }));
        }
    }

    /// Closes a socket at its gateway; the room forgets it.
    pub(super) fn close_socket(&mut self, socket: u64, code: u16, reason: &str) {
        let Some(known) = self.sockets.remove(&socket) else { return };
        self.by_conn.remove(&(known.gateway, known.conn));
        let close = CloseConn { conn: known.conn, code: code.into(), reason: reason.to_owned() };
        self.send_class(known.gateway, host_frame::Kind::Close(close));
    }
}

impl ClassRoom {
    /// A frame of the room itself (never dropped), through the gate.
    pub(super) fn send(&mut self, gateway: GatewayId, kind: host_frame::Kind) {
        self.emit(Output::Room(gateway, kind));
    }

    /// A frame the class caused, through the gate.
    fn send_class(&mut self, gateway: GatewayId, kind: host_frame::Kind) {
        self.emit(Output::Class(gateway, kind));
    }

    /// Sends now if nothing waits for a commit, else after what waits.
    pub(super) fn emit(&mut self, output: Output) {
        if self.gate.is_open() {
            self.output(output);
        } else {
            self.gate.hold(output);
        }
    }

    fn output(&mut self, output: Output) {
        let (gateway, kind) = match output {
            Output::Room(gateway, kind) | Output::Class(gateway, kind) => (gateway, kind),
            Output::Handshake(gateway, reply) => (gateway, host_frame::Kind::HandshakeReply(reply)),
            Output::Ran(gateway, tag) => {
                let answer = Broadcast { tags: vec![tag], ..Broadcast::default() };
                (gateway, host_frame::Kind::Broadcast(answer))
            }
            Output::Reply(reply, result) => {
                let _ = reply.send(result);
                return;
            }
        };
        if let host_frame::Kind::SocketState(SocketState { conn, socket: Some(state) }) = &kind
            && let Some(socket) = self.by_conn.get(&(gateway, *conn))
            && let Some(known) = self.sockets.get_mut(socket)
        {
            known.attachment.clone_from(&state.attachment);
        }
        let Some(tx) = self.gateways.get(&gateway) else {
            // A gateway that is away gets it when it is back (acknowledgements
            // aside: it sends those messages again).
            if !matches!(kind, host_frame::Kind::Broadcast(_))
                && self.away.keep(gateway, kind) == Some(false)
            {
                tracing::warn!(room.id = %self.id, gateway, "too much for a gateway that is away; dropping");
                self.metrics.gateways_dropped.inc();
            }
            return;
        };
        if tx.try_send(Box::new(HostFrame { kind: Some(kind), room_seq: 0 })).is_err() {
            tracing::warn!(room.id = %self.id, gateway, "gateway too slow or gone; detaching it");
            self.metrics.gateways_dropped.inc();
            self.gateways.remove(&gateway);
        }
    }

    /// Starts the next group commit if none is in flight; sends what no
    /// longer waits.
    pub(super) fn kick(&mut self) {
        let (store, id, owner, lease) =
            (self.store.clone(), self.id.clone(), self.settings.owner.clone(), self.lease);
        let next_alarm = self.alarms.next();
        let free = self.gate.start(|writes| {
            // The alarm index is a hint beside the commit: lowered before it
            // (a stored alarm is never missing from it), exact after.
            let lowered = writes
                .iter()
                .filter_map(|w| match w {
                    StorageWrite::Alarm(_, at) => Some(*at),
                    _ => None,
                })
                .collect::<Vec<_>>();
            tokio::spawn(async move {
                if let Some(at) = lowered.iter().flatten().min() {
                    store.lower_alarm(&id, *at).await?;
                }
                store.commit_storage(&id, &owner, lease, &writes).await?;
                if !lowered.is_empty() {
                    // Best effort: a stale entry only wakes the room early.
                    if let Err(error) = store.index_alarm(&id, next_alarm).await {
                        tracing::debug!(room.id = %id, %error, "updating the alarm index failed");
                    }
                }
                Ok(())
            })
        });
        for output in free {
            self.output(output);
        }
    }

    /// A commit returned: what waited for it leaves, or, if it failed, the
    /// instance goes and nothing the class said since leaves.
    pub(super) fn committed(&mut self, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                for output in self.gate.finish() {
                    self.output(output);
                }
                self.kick();
            }
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "storing the class room's writes failed; nothing its events sent since leaves");
                self.metrics.commit_failures.inc();
                self.class.metrics.resets.inc();
                self.book.forget_loaded();
                self.alarms.forget();
                for output in self.gate.fail() {
                    if let Output::Handshake(gateway, reply) = &output
                        && let Some(socket) = self.by_conn.remove(&(*gateway, reply.conn))
                    {
                        self.sockets.remove(&socket);
                    }
                    self.output(output);
                }
                self.drop_instance("its writes were not stored");
            }
        }
    }

    /// Waits until every write is stored and every output sent (or dropped).
    pub(super) async fn flush(&mut self) {
        loop {
            self.kick();
            if !self.gate.in_flight() {
                return;
            }
            let result = self.gate.committed().await;
            self.committed(result);
        }
    }
}
