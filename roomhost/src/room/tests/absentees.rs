//! Users no gateway brings back after a move: told gone when the window
//! ends, once, and welcomed back by everyone should they return after all.

use super::*;
use crate::room::absentees::ABSENT_AFTER;

/// Every presence change a gateway has received, until it is quiet:
/// (`join`/`leave`, user, whether the broadcast was marked `rejoined`).
async fn presence(gateway: &mut Gateway) -> Vec<(&'static str, String, bool)> {
    let mut seen = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(100), gateway.rx.recv()).await
    {
        let Some(host_frame::Kind::Broadcast(b)) = frame.kind else { continue };
        for frame in parse(&b.frames) {
            match frame {
                ServerFrame::Join { user_id, .. } => seen.push(("join", user_id, b.rejoined)),
                ServerFrame::Leave { user_id, .. } => seen.push(("leave", user_id, b.rejoined)),
                _ => {}
            }
        }
    }
    seen
}

fn rejoin(conn: ConnId, user: &str) -> gateway_frame::Kind {
    gateway_frame::Kind::Join(Join { conn, user_id: user.into(), rejoin: true, ..Join::default() })
}

fn known(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

#[tokio::test(start_paused = true)]
async fn users_no_gateway_brings_back_after_a_move_are_told_gone_once_and_welcomed_back_by_all() {
    let cluster = Cluster::new();
    // The room just moved here. Its clients had been told alice, bob and
    // carol were present; gateway 1 comes back with bob, gateway 2 with
    // carol, who then leaves. Alice's gateway went down with the move.
    let everyone = known(&["alice", "bob", "carol"]);
    let (mut one, _) = cluster.attach_knowing(1, None, true, everyone.clone()).await;
    cluster.frame(&one, rejoin(1, "bob")).await;
    let (mut two, _) = cluster.attach_knowing(2, None, true, everyone).await;
    cluster.frame(&two, rejoin(2, "carol")).await;
    cluster.frame(&two, gateway_frame::Kind::Leave(Leave { conn: 2 })).await;
    let before = presence(&mut one).await;
    assert_eq!(
        before,
        [
            ("join", "bob".into(), true),
            ("join", "carol".into(), true),
            ("leave", "carol".into(), false)
        ]
    );
    presence(&mut two).await;

    // The window ends: everyone is told alice left, and only alice.
    tokio::time::sleep(ABSENT_AFTER).await;
    assert_eq!(presence(&mut one).await, [("leave", "alice".into(), false)]);
    assert_eq!(presence(&mut two).await, [("leave", "alice".into(), false)]);
    // Said once.
    tokio::time::sleep(ABSENT_AFTER).await;
    assert_eq!(presence(&mut one).await, []);

    // Alice's gateway was only slow: she is back, and everyone is told,
    // not only those who arrived after she left.
    let (three, _) = cluster.attach_knowing(3, None, true, Vec::new()).await;
    cluster.frame(&three, rejoin(3, "alice")).await;
    assert_eq!(presence(&mut one).await, [("join", "alice".into(), false)]);
    // A later return of someone nobody was told left is a rejoin as before.
    cluster.frame(&three, rejoin(4, "dave")).await;
    assert_eq!(presence(&mut one).await, [("join", "dave".into(), true)]);
}

#[tokio::test(start_paused = true)]
async fn users_known_to_a_gateway_attaching_to_a_room_long_started_are_not_awaited() {
    let (cluster, mut gw, _) = Cluster::with_alice(1).await;
    tokio::time::sleep(ABSENT_AFTER).await;
    // A gateway whose stream broke comes back to the same owner: whoever it
    // knew and the room does not have left in the room's own sight.
    let (_two, _) = cluster.attach_knowing(2, None, true, known(&["zoe"])).await;
    tokio::time::sleep(ABSENT_AFTER * 2).await;
    assert_eq!(presence(&mut gw).await, []);
}
