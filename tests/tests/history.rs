//! History on join, resume with `since`/`epoch`, paging with `history`,
//! hibernation, and persistence across restarts of everything but Redis.

use rooms_proto::admin::ListRoomsRequest;
use rooms_proto::admin::admin_client::AdminClient;
use rooms_proto::server::ServerFrame;
use rooms_tests::{Client, TestCluster, eventually};
use serde_json::json;

fn seqs(messages: &[ServerFrame]) -> Vec<u64> {
    messages.iter().map(|m| m.seq().expect("persisted event")).collect()
}

fn history(frame: ServerFrame) -> (Vec<ServerFrame>, bool, bool) {
    match frame {
        ServerFrame::History { messages, has_more, gap } => (messages, has_more, gap),
        other => panic!("expected history, got {other:?}"),
    }
}

fn welcome(frame: &ServerFrame) -> (u64, String) {
    match frame {
        ServerFrame::Welcome { seq, epoch, .. } => (*seq, epoch.clone()),
        other => panic!("expected welcome, got {other:?}"),
    }
}

async fn send_chats(client: &mut Client, count: usize) {
    for i in 0..count {
        client.chat(&format!("m{i}"), "").await;
    }
    client.chats(count).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_last_100_and_resume_and_paging_work() {
    let cluster = TestCluster::new(2, 2).unthrottled().start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut writer = a.join("hist", "writer").await;
    send_chats(&mut writer, 120).await;

    // Join later on the other gateway: the last 100, oldest first.
    let (mut late, hello, first_page) = Client::join(&b.ws_url("hist", "user=late")).await;
    let (seq, epoch) = welcome(&hello);
    assert_eq!(seq, 120);
    let (messages, has_more, gap) = history(first_page);
    assert_eq!(seqs(&messages), (21..=120).collect::<Vec<_>>());
    assert!(has_more && !gap);

    // Page backwards with `history`.
    late.send_json(json!({"type": "history", "before": 21, "limit": 10})).await;
    let (page, has_more, _) =
        history(late.until(|f| matches!(f, ServerFrame::History { .. })).await);
    assert_eq!(seqs(&page), (11..=20).collect::<Vec<_>>());
    assert!(has_more);
    late.send_json(json!({"type": "history", "before": 11, "limit": 100})).await;
    let (page, has_more, _) =
        history(late.until(|f| matches!(f, ServerFrame::History { .. })).await);
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<_>>());
    assert!(!has_more, "nothing older than seq 1");

    // Resume: exactly the events after `since`.
    let url = b.ws_url("hist", &format!("user=back&since=110&epoch={epoch}"));
    let (_back, _, replay) = Client::join(&url).await;
    let (messages, _, gap) = history(replay);
    assert_eq!(seqs(&messages), (111..=120).collect::<Vec<_>>());
    assert!(!gap);
    // Resume from far back (older than the in-memory page) still replays all.
    let url = a.ws_url("hist", &format!("user=back2&since=3&epoch={epoch}"));
    let (_back2, _, replay) = Client::join(&url).await;
    let (messages, _, gap) = history(replay);
    assert_eq!(seqs(&messages), (4..=103).collect::<Vec<_>>(), "first replay page");
    assert!(!gap);
    // An unknown epoch is never silent loss: gap is set.
    let url = a.ws_url("hist", "user=other&since=5&epoch=0000000000000000");
    let (_other, _, replay) = Client::join(&url).await;
    let (_, _, gap) = history(replay);
    assert!(gap, "a mismatched epoch reports a gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_older_than_retention_reports_a_gap() {
    let cluster =
        TestCluster::new(1, 1).roomhost_arg("--history-limit=100").unthrottled().start().await;
    let gw = &cluster.gateways[0];
    let (mut writer, hello, _) = Client::join(&gw.ws_url("short", "user=w")).await;
    let (_, epoch) = welcome(&hello);
    send_chats(&mut writer, 150).await;
    let url = gw.ws_url("short", &format!("user=r&since=10&epoch={epoch}"));
    let (_reader, _, replay) = Client::join(&url).await;
    let (messages, _, gap) = history(replay);
    assert!(gap, "events 11..50 are gone");
    assert_eq!(seqs(&messages), (51..=150).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_hibernate_and_reload_from_redis() {
    let cluster = TestCluster::new(1, 1).roomhost_arg("--room-idle-timeout=1s").start().await;
    let gw = &cluster.gateways[0];
    let mut ann = gw.join("sleepy", "ann").await;
    ann.send_json(json!({"type": "name", "name": "Ann"})).await;
    ann.chat("before sleep", "").await;
    ann.chats(1).await;
    ann.close().await;

    let mut admin = AdminClient::connect(gw.admin_url()).await.expect("admin");
    eventually("the room to be evicted", || {
        let mut admin = admin.clone();
        async move {
            let rooms = admin.list_rooms(ListRoomsRequest {}).await.ok()?.into_inner().rooms;
            rooms.iter().all(|r| r.room != "sleepy").then_some(())
        }
    })
    .await;
    let _ = &mut admin;

    let (mut again, hello, page) = Client::join(&gw.ws_url("sleepy", "user=ann")).await;
    assert_eq!(welcome(&hello).0, 2);
    let (messages, _, _) = history(page);
    assert_eq!(seqs(&messages), vec![1, 2]);
    again.chat("after sleep", "").await;
    match again.until(|f| matches!(f, ServerFrame::Chat { .. })).await {
        ServerFrame::Chat { seq, user_name, .. } => {
            assert_eq!(seq, Some(3));
            assert_eq!(user_name.as_deref(), Some("Ann"), "the name came back from Redis");
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_everything_but_redis_keeps_history_names_and_seq() {
    let mut cluster = TestCluster::new(2, 2).start().await;
    let mut ann = cluster.gateways[0].join("durable", "ann").await;
    ann.send_json(json!({"type": "name", "name": "Ann"})).await;
    for i in 0..5 {
        ann.chat(&format!("before {i}"), "").await;
    }
    let chats = ann.chats(5).await;
    assert_eq!(chats.last().and_then(ServerFrame::seq), Some(6));
    let epoch_before = {
        let (_probe, hello, _) =
            Client::join(&cluster.gateways[1].ws_url("durable", "user=probe")).await;
        welcome(&hello).1
    };
    drop(ann);

    cluster.restart_all_but_redis().await;

    let (mut back, hello, page) =
        Client::join(&cluster.gateways[1].ws_url("durable", "user=ann")).await;
    let (seq, epoch) = welcome(&hello);
    assert_eq!(seq, 6);
    assert_eq!(epoch, epoch_before, "same history incarnation");
    let (messages, _, _) = history(page);
    assert_eq!(seqs(&messages), (1..=6).collect::<Vec<_>>());
    back.chat("after", "").await;
    match back.until(|f| matches!(f, ServerFrame::Chat { .. })).await {
        ServerFrame::Chat { seq, user_name, .. } => {
            assert_eq!(seq, Some(7), "seq continues");
            assert_eq!(user_name.as_deref(), Some("Ann"));
        }
        _ => unreachable!(),
    }
}
