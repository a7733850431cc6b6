//! The room's present users, as the link's stream tells them, to write its
//! connections' `welcome` (`Open.writes_welcome`).
//!
//! The roomhost sends a snapshot when the stream attaches (its first page
//! resets what the link knew), then every arrival, departure and rename in
//! the order the room made them; a join's answer (`Direct.welcome`) comes
//! after everything that preceded it. The `welcome` written from here thus
//! lists exactly the users the roomhost had when it answered the join, and
//! the roomhost sends O(1) bytes per join instead of the whole list.
//!
//! Bounded by the room: a roomhost admits at most its per-room connection
//! limit, so a roster never holds more users than that.

use std::collections::HashMap;

use bytes::Bytes;
use rooms_proto::host::{self, RosterUser, Welcome};
use rooms_proto::server::{self, MAX_WELCOME_USERS, UserEntry};

#[derive(Default)]
pub(super) struct Roster {
    /// Each present user's display name; None: the user id.
    users: HashMap<Box<str>, Option<Box<str>>>,
}

impl Roster {
    /// Applies a roster frame: reset, then departures, then arrivals and
    /// renames.
    pub(super) fn apply(&mut self, roster: host::Roster) {
        if roster.reset {
            self.users.clear();
        }
        for user in roster.absent {
            self.users.remove(user.as_str());
        }
        for RosterUser { user_id, name } in roster.present {
            self.users.insert(user_id.into_boxed_str(), name.map(String::into_boxed_str));
        }
    }

    /// The present users' ids.
    pub(super) fn user_ids(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|user| &**user)
    }

    /// `user`'s `welcome` to `room`, listing the roster as it stands.
    pub(super) fn welcome(&self, room: &str, user: &str, welcome: &Welcome) -> Bytes {
        let users: Vec<UserEntry<'_>> = self
            .users
            .iter()
            .take(MAX_WELCOME_USERS)
            .map(|(user_id, name)| UserEntry { user_id, name: name.as_deref().unwrap_or(user_id) })
            .collect();
        let more = self.users.len() - users.len();
        server::welcome(room, user, welcome.seq, &welcome.epoch, &users, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn present(user: &str, name: Option<&str>) -> RosterUser {
        RosterUser { user_id: user.into(), name: name.map(str::to_owned) }
    }

    /// The users a `welcome` written now lists (sorted), and its `moreUsers`.
    fn listed(roster: &Roster) -> (Vec<(String, String)>, u64) {
        let welcome = Welcome { seq: 7, epoch: "e1".into() };
        let frame: Value =
            serde_json::from_slice(&roster.welcome("lobby", "me", &welcome)).unwrap();
        let head = ["type", "room", "userId", "seq", "epoch"].map(|k| frame[k].clone());
        assert_eq!(head, [json!("welcome"), json!("lobby"), json!("me"), json!(7), json!("e1")]);
        let Some(listed) = frame["users"].as_array() else { panic!("{frame}") };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut users: Vec<_> =
            listed.iter().map(|u| (text(&u["userId"]), text(&u["name"]))).collect();
        users.sort();
        (users, frame["moreUsers"].as_u64().unwrap_or(0))
    }

    #[test]
    fn changes_apply_in_order_and_a_reset_forgets_what_came_before() {
        let mut roster = Roster::default();
        let pair = |u: &str, n: &str| (u.to_owned(), n.to_owned());
        roster.apply(host::Roster {
            reset: true,
            present: vec![present("ann", None), present("bob", Some("Bobby"))],
            absent: vec![],
        });
        assert_eq!(listed(&roster), (vec![pair("ann", "ann"), pair("bob", "Bobby")], 0));
        // Renamed, and gone.
        let renamed =
            host::Roster { present: vec![present("ann", Some("Ann"))], ..Default::default() };
        roster.apply(renamed);
        roster.apply(host::Roster { absent: vec!["bob".into()], ..Default::default() });
        assert_eq!(listed(&roster), (vec![pair("ann", "Ann")], 0));
        // A new snapshot replaces everything.
        roster.apply(host::Roster {
            reset: true,
            present: vec![present("cy", None)],
            absent: vec![],
        });
        assert_eq!(listed(&roster), (vec![pair("cy", "cy")], 0));
        roster.apply(host::Roster { reset: true, ..Default::default() });
        assert_eq!(listed(&roster), (vec![], 0));
    }

    #[test]
    fn a_welcome_lists_at_most_the_limit_and_counts_the_rest() {
        let mut roster = Roster::default();
        let present = (0..MAX_WELCOME_USERS + 5).map(|i| present(&format!("u{i}"), None)).collect();
        roster.apply(host::Roster { reset: true, present, absent: vec![] });
        let (users, more) = listed(&roster);
        assert_eq!((users.len(), more), (MAX_WELCOME_USERS, 5));
    }
}
