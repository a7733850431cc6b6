//! `welcome` and the roster behind it.
//!
//! A joining connection's `welcome` lists the room's present users. Written
//! by the roomhost, that is O(n) bytes per join in a room of n members, and
//! O(n²) per join storm (a gateway rollout makes them all reconnect at
//! once): bytes the roomhost encodes and its allocator keeps long after.
//! A gateway that says it writes `welcome` itself (`Open.writes_welcome`)
//! is instead kept up to date with the roster: a snapshot when it attaches,
//! then every arrival (on the others' `join`), departure and rename as the
//! room makes it, on the same stream as the `welcome`s it is asked to write. Each `welcome` it
//! writes therefore lists the users the room had when it sent the join's
//! answer, exactly as if the roomhost had written it; and a join costs the
//! roomhost O(1) bytes per gateway. Other gateways get the `welcome` whole.

use super::*;
use rooms_proto::host::{RosterUser, Welcome};
use rooms_proto::server::MAX_WELCOME_USERS;

/// Users per frame of a roster snapshot.
pub const ROSTER_PAGE: usize = 1000;

impl Room {
    /// Answers a join: its `welcome` (or what its gateway writes it from),
    /// then `history`.
    pub(super) fn welcome(
        &mut self,
        gateway: GatewayId,
        conn: ConnId,
        user: &str,
        history: Vec<Bytes>,
    ) {
        let writes_welcome = self.gateways.get(&gateway).is_some_and(|s| s.writes_welcome);
        let direct = if writes_welcome {
            let welcome = Welcome { seq: self.seq, epoch: self.epoch.clone() };
            Direct { conn, frames: history, tags: Vec::new(), welcome: Some(welcome) }
        } else {
            let mut frames = Vec::with_capacity(history.len() + 1);
            frames.push(self.welcome_frame(user));
            frames.extend(history);
            Direct { conn, frames, tags: Vec::new(), welcome: None }
        };
        self.send(gateway, host_frame::Kind::Direct(direct));
    }

    /// A whole `welcome`, for a gateway that does not write it.
    fn welcome_frame(&self, user: &str) -> Bytes {
        let users: Vec<UserEntry<'_>> = self
            .presence
            .keys()
            .take(MAX_WELCOME_USERS)
            .map(|u| UserEntry { user_id: u, name: self.display_name(u) })
            .collect();
        let more = self.presence.len().saturating_sub(users.len());
        server::welcome(self.id.as_str(), user, self.seq, &self.epoch, &users, more)
    }

    fn roster_user(&self, user: &str) -> RosterUser {
        let name = self.display_name(user);
        RosterUser { user_id: user.to_owned(), name: (name != user).then(|| name.to_owned()) }
    }

    /// `user` arrived with connection `conn`: `join` for everyone else,
    /// carrying the roster's change in the same frame. `rejoined`: the
    /// connection followed the room here, and only the connections welcomed
    /// here since are to be told.
    pub(super) fn arrival(&mut self, gateway: GatewayId, conn: ConnId, user: &str, rejoined: bool) {
        let frame = server::join(user, self.display_name(user));
        let roster = Roster { present: vec![self.roster_user(user)], ..Roster::default() };
        let arrival = Some((&roster, rejoined));
        self.broadcast(vec![frame], Some((gateway, conn)), &[], true, arrival);
    }

    /// `user`'s display name changed.
    pub(super) fn roster_renamed(&mut self, user: &str) {
        let present = vec![self.roster_user(user)];
        self.roster_change(Roster { reset: false, present, absent: Vec::new() });
    }

    /// `user`'s last connection left.
    pub(super) fn roster_absent(&mut self, user: &str) {
        let absent = vec![user.to_owned()];
        self.roster_change(Roster { reset: false, present: Vec::new(), absent });
    }

    /// Sends a change to every gateway that keeps the roster.
    fn roster_change(&mut self, roster: Roster) {
        let mut dead = Vec::new();
        for (id, stream) in &self.gateways {
            if !stream.writes_welcome {
                continue;
            }
            let frame = self.frame_of(host_frame::Kind::Roster(roster.clone()));
            if stream.tx.try_send(Box::new(frame)).is_err() {
                dead.push(*id);
            }
        }
        self.drop_gateways(dead);
    }

    /// The whole roster to one gateway, in pages; the first resets it.
    pub(super) fn send_roster(&mut self, gateway: GatewayId) {
        let users: Vec<RosterUser> = self.presence.keys().map(|u| self.roster_user(u)).collect();
        let mut reset = true;
        for page in users.chunks(ROSTER_PAGE) {
            let roster = Roster { reset, present: page.to_vec(), absent: Vec::new() };
            self.send(gateway, host_frame::Kind::Roster(roster));
            reset = false;
        }
        if reset {
            self.send(gateway, host_frame::Kind::Roster(Roster { reset, ..Roster::default() }));
        }
    }

    /// Display names changed in bulk (a reload, a failed commit's renames
    /// undone): every gateway that keeps the roster gets it again.
    pub(super) fn resend_roster(&mut self) {
        let writers: Vec<GatewayId> =
            self.gateways.iter().filter(|(_, s)| s.writes_welcome).map(|(id, _)| *id).collect();
        for gateway in writers {
            self.send_roster(gateway);
        }
    }
}
