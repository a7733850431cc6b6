//! Fan-out to gateways: staged outputs grouped into broadcasts sent once
//! per gateway stream, frames for one connection, and gateways dropped when
//! their queue is full.

use super::*;

impl Room {
    /// Sends staged outputs to every gateway, consecutive frames for everyone
    /// grouped into one `Broadcast`; presence goes in broadcasts of its own,
    /// marked so that gateways may gather it in a join storm.
    pub(super) fn emit(&mut self) {
        let outputs = std::mem::take(&mut self.staged.outputs);
        let origins = std::mem::take(&mut self.staged.origins);
        let mut run: Vec<Bytes> = Vec::new();
        for output in outputs {
            let (frame, except) = match output {
                Output::Event(frame) | Output::All(frame) => {
                    run.push(frame);
                    continue;
                }
                Output::Presence(frame) => (frame, None),
                Output::Except { gateway, conn, frame } => (frame, Some((gateway, conn))),
            };
            self.broadcast(std::mem::take(&mut run), None, &[], false, None);
            self.broadcast(vec![frame], except, &[], true, None);
        }
        self.broadcast(run, None, &origins, false, None);
        let metrics = self.metrics();
        for origin in &origins {
            metrics.event_seconds.observe(origin.received.elapsed().as_secs_f64());
        }
    }

    /// Sends `frames` to every gateway; each also gets the tags of the chats
    /// it sent among them. `presence`: the frames are presence only.
    /// `arrival`: the roster's change for the gateways that keep it, and
    /// whether the user came with a move (`Broadcast.rejoined`).
    pub(super) fn broadcast(
        &mut self,
        frames: Vec<Bytes>,
        except: Option<(GatewayId, ConnId)>,
        origins: &[Origin],
        presence: bool,
        arrival: Option<(&Roster, bool)>,
    ) {
        if frames.is_empty() {
            return;
        }
        self.metrics().broadcasts.inc();
        let mut dead = Vec::new();
        for (id, GatewayStream { tx, writes_welcome }) in &self.gateways {
            let except_conn = match except {
                Some((gateway, conn)) if gateway == *id => conn,
                _ => 0,
            };
            let tags =
                origins.iter().filter(|o| o.gateway == *id && o.tag != 0).map(|o| o.tag).collect();
            let rejoined = arrival.is_some_and(|(_, rejoined)| rejoined);
            if rejoined && !*writes_welcome {
                // An older gateway would tell every connection, not only
                // those that did not know the user: it is told nothing.
                continue;
            }
            let roster = arrival.filter(|_| *writes_welcome).map(|(roster, _)| roster.clone());
            let frames = frames.clone();
            let frame = Broadcast { frames, except_conn, tags, presence, roster, rejoined };
            let msg =
                HostFrame { kind: Some(host_frame::Kind::Broadcast(frame)), room_seq: self.seq };
            if tx.try_send(Box::new(msg)).is_err() {
                dead.push(*id);
            }
        }
        self.drop_gateways(dead);
    }

    pub(super) fn direct(&mut self, gateway: GatewayId, conn: ConnId, frames: Vec<Bytes>) {
        self.answer(gateway, conn, 0, frames);
    }

    /// Frames for one connection that answer its chat tagged `tag` (0: none).
    pub(super) fn answer(
        &mut self,
        gateway: GatewayId,
        conn: ConnId,
        tag: u64,
        frames: Vec<Bytes>,
    ) {
        let tags = if tag == 0 { Vec::new() } else { vec![tag] };
        let direct = Direct { conn, frames, tags, welcome: None };
        self.send(gateway, host_frame::Kind::Direct(direct));
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Brings the process gauges up to date with this room's connections
    /// and gateway streams.
    pub(super) fn report_gauges(&mut self) {
        let now = (self.conns.len() as i64, self.gateways.len() as i64);
        let metrics = &self.metrics;
        metrics.connections.inc_by(now.0 - self.reported.0);
        metrics.gateway_streams.inc_by(now.1 - self.reported.1);
        self.reported = now;
    }

    pub(super) fn frame_of(&self, kind: host_frame::Kind) -> HostFrame {
        HostFrame { kind: Some(kind), room_seq: self.seq }
    }

    pub(super) fn send(&mut self, gateway: GatewayId, kind: host_frame::Kind) {
        let frame = self.frame_of(kind);
        let Some(stream) = self.gateways.get(&gateway) else {
            return;
        };
        if stream.tx.try_send(Box::new(frame)).is_err() {
            self.drop_gateways(vec![gateway]);
        }
    }

    /// Gateways whose queue is full or closed lose their place in the room;
    /// their stream ends, and they re-attach and resume by seq.
    pub(super) fn drop_gateways(&mut self, dead: Vec<GatewayId>) {
        if dead.is_empty() {
            return;
        }
        for gateway in dead {
            tracing::warn!(room.id = %self.id, gateway, "gateway too slow or gone; detaching it");
            self.metrics().gateways_dropped.inc();
            self.detach(gateway);
        }
        self.emit();
    }
}
