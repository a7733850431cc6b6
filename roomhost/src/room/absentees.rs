//! Users nobody brought back after a move.
//!
//! When a room moves, each gateway re-announces its own connections to the
//! new owner, silently: their users never left. A gateway that went down
//! with the move (a crash during the handoff, or with the old owner)
//! re-announces nothing, and its users would stay on everyone else's screen
//! for good: the new owner never knew them, so it never says they left.
//!
//! So a re-attaching gateway also names the users its clients were told
//! are present (`Open.known_users`, its roster). For [`ABSENT_AFTER`] after
//! the room started here, those are expected back; when that window ends,
//! everyone is told `leave` for each one that is not present and has not
//! left in the meantime. Should one come back later after all (its gateway
//! was only slow), everyone is told `join` again, not just the connections
//! that arrived after it left.
//!
//! Bounded: at most [`MAX_CONNS_PER_ROOM`] users expected and as many told
//! `leave`. The whole state exists only for a room that moved here with
//! users: the expected ones until the window ends, those told `leave`
//! until they come back or the room stops.

use std::collections::HashSet;

use super::*;

/// How long after a room started on a new owner the users its gateways
/// knew are waited for (as long as a class room waits for its gateways).
pub(super) const ABSENT_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Absentees {
    /// Users some gateway's clients were told are present, not yet back.
    expected: HashSet<Arc<str>>,
    /// Users everyone was told `leave` for at the window's end.
    declared: HashSet<Arc<str>>,
}

impl Room {
    /// When the window after the room started here ends.
    fn absent_after(&self) -> Instant {
        self.started + ABSENT_AFTER
    }

    /// A gateway re-attached knowing these users: while the room has just
    /// started here, they are expected back.
    pub(super) fn expect_back(&mut self, known: Vec<String>) {
        if known.is_empty() || Instant::now() >= self.absent_after() {
            return;
        }
        let absentees = self.absentees.get_or_insert_default();
        for user in known {
            if absentees.expected.len() >= MAX_CONNS_PER_ROOM {
                break;
            }
            if !self.presence.contains_key(user.as_str()) {
                absentees.expected.insert(user.into());
            }
        }
    }

    /// When the window ends, if users are still expected.
    pub(super) fn absentees_due(&self) -> Option<Instant> {
        let expecting = self.absentees.as_ref().is_some_and(|a| !a.expected.is_empty());
        expecting.then(|| self.absent_after())
    }

    /// `user` came back, or everyone saw them leave: nothing to tell.
    pub(super) fn accounted_for(&mut self, user: &str) {
        if let Some(absentees) = &mut self.absentees {
            absentees.expected.remove(user);
            self.forget_absentees_if_done();
        }
    }

    /// `user` is back after everyone was told they left: news to everyone.
    pub(super) fn came_back(&mut self, user: &str) -> bool {
        let Some(absentees) = &mut self.absentees else {
            return false;
        };
        let declared = absentees.declared.remove(user);
        self.forget_absentees_if_done();
        declared
    }

    /// The window ended: `leave` for everyone expected who is not back.
    pub(super) fn settle_absentees(&mut self) {
        let Some(mut absentees) = self.absentees.take() else {
            return;
        };
        let gone: Vec<Arc<str>> =
            absentees.expected.drain().filter(|user| !self.presence.contains_key(user)).collect();
        if !gone.is_empty() {
            tracing::info!(room.id = %self.id, users = gone.len(), "users not back after the move: told gone");
        }
        for user in gone {
            let frame = server::leave(&user, self.display_name(&user));
            self.staged.outputs.push(Output::Presence(frame));
            if absentees.declared.len() < MAX_CONNS_PER_ROOM {
                absentees.declared.insert(user);
            }
        }
        self.absentees = Some(absentees);
        self.forget_absentees_if_done();
        self.emit();
    }

    /// Nobody left to expect or to welcome back: the state goes.
    fn forget_absentees_if_done(&mut self) {
        if self.absentees.as_ref().is_some_and(|a| a.expected.is_empty() && a.declared.is_empty()) {
            self.absentees = None;
        }
    }
}
