//! The output gate of a class room: an event's storage writes are committed
//! (fenced by the lease, in one round trip) before anything it sent leaves;
//! then its sends, closes and socket states go to the gateways, in order,
//! each payload once per gateway.

use rooms_classes::{Effect, Outcome, Payload, PoolError};
use rooms_proto::host::{ClassSocket, CloseConn, SocketSend, SocketState, socket_data};

use super::*;
use crate::store::StorageWrite;

impl ClassRoom {
    /// Applies what an event did. None: nothing of it stands (its instance
    /// failed or its writes were not stored; the instance is dropped).
    pub(super) async fn apply<T>(
        &mut self,
        outcome: Result<Outcome<T>, PoolError>,
    ) -> Option<Result<T, String>> {
        self.metrics.class_events.inc();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "the room's class failed; its instance starts again from storage");
                self.metrics.class_resets.inc();
                self.drop_instance("failed");
                return None;
            }
        };
        if let Err(exception) = &outcome.result {
            self.metrics.class_exceptions.inc();
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
        if !writes.is_empty() {
            let stored = self
                .store
                .commit_storage(&self.id, &self.settings.owner, self.lease, &writes)
                .await;
            if let Err(error) = stored {
                tracing::warn!(room.id = %self.id, %error, "storing the class room's writes failed; nothing the event sent leaves");
                self.metrics.commit_failures.inc();
                self.metrics.class_resets.inc();
                self.book.forget_loaded();
                self.drop_instance("its writes were not stored");
                return None;
            }
        }
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
                        self.send(
                            gateway,
                            host_frame::Kind::SocketState(SocketState {
                                conn,
                                socket: Some(state),
                            }),
                        );
                    }
                }
                Effect::Attach { socket, value } => {
                    let Some(known) = self.sockets.get_mut(&socket) else { continue };
                    known.attachment = value;
                    let state = ClassSocket {
                        tags: known.tags.clone(),
                        attachment: known.attachment.clone(),
                        hibernatable: known.hibernatable,
                    };
                    let (gateway, conn) = (known.gateway, known.conn);
                    self.send(
                        gateway,
                        host_frame::Kind::SocketState(SocketState { conn, socket: Some(state) }),
                    );
                }
                Effect::Put { .. } | Effect::Delete { .. } | Effect::DeleteAll => {}
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
            self.send(gateway, host_frame::Kind::SocketSend(SocketSend { conns, data }));
        }
    }

    /// Closes a socket at its gateway; the room forgets it.
    pub(super) fn close_socket(&mut self, socket: u64, code: u16, reason: &str) {
        let Some(known) = self.sockets.remove(&socket) else { return };
        self.by_conn.remove(&(known.gateway, known.conn));
        let close = CloseConn { conn: known.conn, code: code.into(), reason: reason.to_owned() };
        self.send(known.gateway, host_frame::Kind::Close(close));
    }
}
