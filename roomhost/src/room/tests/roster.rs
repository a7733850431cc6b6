//! Rooms and gateways that write `welcome` themselves: the roster they are
//! kept up to date with, and the `welcome` still sent whole to the others.

use super::*;

/// A roster as a gateway that writes `welcome` keeps it: user -> name.
#[derive(Default)]
struct KeptRoster(std::collections::BTreeMap<String, Option<String>>);

impl KeptRoster {
    fn apply(&mut self, roster: rooms_proto::host::Roster) {
        if roster.reset {
            self.0.clear();
        }
        for user in roster.absent {
            self.0.remove(&user);
        }
        self.0.extend(roster.present.into_iter().map(|u| (u.user_id, u.name)));
    }

    /// Takes frames up to the next one that is not a roster change alone,
    /// applying the changes (also those a broadcast carries).
    async fn follow(&mut self, gateway: &mut Gateway) -> host_frame::Kind {
        loop {
            match gateway.next().await {
                host_frame::Kind::Roster(roster) => self.apply(roster),
                host_frame::Kind::Broadcast(mut b) => {
                    if let Some(roster) = b.roster.take() {
                        self.apply(roster);
                    }
                    return host_frame::Kind::Broadcast(b);
                }
                other => return other,
            }
        }
    }

    /// Takes the next frame, which must be a whole roster.
    async fn snapshot(&mut self, gateway: &mut Gateway) {
        match gateway.next().await {
            host_frame::Kind::Roster(snapshot) => {
                assert!(snapshot.reset, "{snapshot:?}");
                self.apply(snapshot);
            }
            other => panic!("expected the whole roster, got {other:?}"),
        }
    }

    /// `user` joins as `conn` through `gateway`, which writes `welcome`:
    /// its arrival on the `join`, then the answer, which is returned.
    async fn join(
        &mut self,
        cluster: &Cluster,
        gateway: &mut Gateway,
        conn: ConnId,
        user: &str,
    ) -> Direct {
        let join = Join { conn, user_id: user.into(), ..Join::default() };
        cluster.frame(gateway, gateway_frame::Kind::Join(join)).await;
        match self.follow(gateway).await {
            host_frame::Kind::Broadcast(b) => assert_eq!((b.except_conn, b.presence), (conn, true)),
            other => panic!("expected {user}'s join, got {other:?}"),
        }
        match self.follow(gateway).await {
            host_frame::Kind::Direct(direct) if direct.conn == conn => direct,
            other => panic!("expected {user}'s answer, got {other:?}"),
        }
    }

    /// A room with one gateway (1) that writes `welcome`, and `user` on it
    /// as `conn`; the roster that gateway keeps.
    async fn first_member(conn: ConnId, user: &str) -> (Cluster, Gateway, Self) {
        let cluster = Cluster::new();
        let (mut gw, _) = cluster.attach_as(1, None, true).await;
        let mut roster = Self::default();
        roster.join(&cluster, &mut gw, conn, user).await;
        (cluster, gw, roster)
    }

    fn users(&self) -> Vec<(&str, Option<&str>)> {
        self.0.iter().map(|(u, n)| (u.as_str(), n.as_deref())).collect()
    }
}

#[tokio::test]
async fn a_gateway_writing_welcome_is_kept_up_to_date_and_the_others_get_it_whole() {
    use rooms_proto::host::SetName;
    let cluster = Cluster::new();
    let (mut legacy, _) = cluster.attach(1, None).await;
    cluster.join(&mut legacy, 1, "ann").await;
    // Attaching: a snapshot of who is here, resetting what it knew.
    let (mut writer, _) = cluster.attach_as(2, None, true).await;
    let mut roster = KeptRoster::default();
    roster.snapshot(&mut writer).await;
    assert_eq!(roster.users(), [("ann", None)]);
    // A join through it: the roster first, then the answer naming what the
    // welcome says besides its users, and the history after it.
    // Bob's arrival rides on the others' `join`.
    let direct = roster.join(&cluster, &mut writer, 5, "bob").await;
    assert_eq!(roster.users(), [("ann", None), ("bob", None)]);
    let welcome = direct.welcome.expect("the gateway writes the welcome");
    assert_eq!(welcome.seq, 0);
    assert!(matches!(parse(&direct.frames)[..], [ServerFrame::History { .. }]), "no welcome sent");
    // The other gateway is told of bob as a client would be, and nothing more.
    assert!(matches!(&legacy.broadcast().await.0[..], [ServerFrame::Join { .. }]));
    // A rename and a departure reach the roster as the room makes them.
    let rename = SetName { conn: 5, name: "Bobby".into() };
    cluster.frame(&writer, gateway_frame::Kind::SetName(rename)).await;
    assert!(matches!(roster.follow(&mut writer).await, host_frame::Kind::Broadcast(_)));
    cluster.frame(&legacy, gateway_frame::Kind::Leave(Leave { conn: 1 })).await;
    assert!(matches!(roster.follow(&mut writer).await, host_frame::Kind::Broadcast(_)));
    assert_eq!(roster.users(), [("bob", Some("Bobby"))]);
    // A gateway that does not write it gets the same list, whole.
    legacy.broadcast().await; // the rename
    legacy.broadcast().await; // ann's leave
    let joined = cluster.join(&mut legacy, 2, "cy").await;
    let ServerFrame::Welcome { users, epoch, .. } = &joined[0] else { panic!("{joined:?}") };
    let mut listed: Vec<_> = users.iter().map(|u| (u.user_id.as_str(), u.name.as_str())).collect();
    listed.sort();
    assert_eq!(listed, [("bob", "Bobby"), ("cy", "cy")]);
    assert_eq!(*epoch, welcome.epoch);
    assert!(matches!(roster.follow(&mut writer).await, host_frame::Kind::Broadcast(_)));
    assert_eq!(roster.users(), [("bob", Some("Bobby")), ("cy", None)]);
}

#[tokio::test]
async fn a_rename_whose_commit_failed_is_taken_back_from_the_roster() {
    use rooms_proto::host::SetName;
    let (cluster, mut gw, mut roster) = KeptRoster::first_member(5, "bob").await;
    assert_eq!(roster.users(), [("bob", None)]);
    let answered = |kind| matches!(kind, host_frame::Kind::Direct(Direct { conn: 5, .. }));
    // The rename is shown as soon as it is staged, as a `welcome` written
    // by the roomhost would show it; its commit fails, and so does the name.
    cluster.store.refuse_commits(true);
    let rename = SetName { conn: 5, name: "Bobby".into() };
    cluster.frame(&gw, gateway_frame::Kind::SetName(rename)).await;
    assert!(answered(roster.follow(&mut gw).await), "the refusal");
    assert_eq!(roster.users(), [("bob", Some("Bobby"))]);
    roster.snapshot(&mut gw).await;
    assert_eq!(roster.users(), [("bob", None)]);
}

#[tokio::test]
async fn a_user_back_after_a_move_is_announced_for_those_welcomed_here_before_it() {
    let (cluster, mut first, mut roster) = KeptRoster::first_member(1, "cy").await;
    let (mut legacy, _) = cluster.attach(3, None).await;
    // Bob's gateway follows the room here: his connection rejoins silently,
    // but Cy, welcomed here before, never heard of him.
    let (mut second, _) = cluster.attach_as(2, None, true).await;
    let mut other = KeptRoster::default();
    let rejoin = Join { conn: 9, user_id: "bob".into(), rejoin: true, ..Join::default() };
    cluster.frame(&second, gateway_frame::Kind::Join(rejoin.clone())).await;
    for (gateway, kept) in [(&mut first, &mut roster), (&mut second, &mut other)] {
        let host_frame::Kind::Broadcast(b) = kept.follow(gateway).await else {
            panic!("expected bob's join")
        };
        assert!(b.rejoined && b.presence, "{b:?}");
        assert!(
            matches!(&parse(&b.frames)[..], [ServerFrame::Join { user_id, .. }] if user_id == "bob")
        );
        assert_eq!(kept.users(), [("bob", None), ("cy", None)]);
    }
    // A second connection of his adds nothing; an older gateway would tell
    // everyone, so it is told nothing.
    let again = Join { conn: 10, ..rejoin };
    cluster.frame(&second, gateway_frame::Kind::Join(again)).await;
    second.quiet().await;
    first.quiet().await;
    legacy.quiet().await;
}
