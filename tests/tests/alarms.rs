//! Room class alarms and timers on real processes and Redis: durable across
//! a SIGKILL of the room's owner (fired once, by the next owner, with its
//! writes stored and its sends delivered), and fired for a room that left
//! memory (woken through the alarm index).

use std::time::Duration;

use rooms_tests::client::metric;
use rooms_tests::process::roomctl_ok;
use rooms_tests::{Client, TestCluster, eventually};

fn clock() -> String {
    format!(
        "--room-class=clock-*={}/fixtures/alarm-clock.js#AlarmClock",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_set_before_its_owner_is_sigkilled_fires_once_on_the_next_owner() {
    let mut cluster = TestCluster::new(3, 2)
        .file_membership()
        .roomhost_arg("--lease-ttl=2s")
        .roomhost_arg(&clock())
        .start()
        .await;
    let room = "clock-1";
    let mut alice = Client::connect(&cluster.gateways[0].ws_url(room, "")).await.unwrap();
    let mut bob = Client::connect(&cluster.gateways[1].ws_url(room, "")).await.unwrap();
    alice.send_text("alarm 3500").await;
    assert!(alice.json().await["set"].is_u64(), "the alarm is set and stored");
    let owner = cluster.owner_of(room).await;
    cluster.roomhosts[owner].process.kill();
    // Due 3.5 s after it was set; the dead owner's lease lapses after 2 s.
    for client in [&mut alice, &mut bob] {
        let fired = client.json_within(Duration::from_secs(10)).await.expect("the alarm fired");
        assert_eq!((fired["fired"].as_u64(), fired["retry"].as_u64()), (Some(1), Some(0)));
    }
    assert!(alice.json_within(Duration::from_secs(2)).await.is_none(), "it fires once");
    // What the handler stored is stored: the next owner's count says so.
    alice.send_text("count").await;
    assert_eq!(alice.json().await["fired"], 1);
    let fired: f64 = {
        let mut total = 0.0;
        for (i, roomhost) in cluster.roomhosts.iter().enumerate() {
            if i != owner {
                total += metric(&roomhost.metrics, "rooms_roomhost_class_alarms_fired_total").await;
            }
        }
        total
    };
    assert_eq!(fired, 1.0, "one roomhost fired it, once");
}

fn invoke(admin: &str, args: &[&str]) -> String {
    roomctl_ok(admin, &[&["invoke"], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_for_a_room_that_left_memory() {
    let cluster = TestCluster::new(1, 1)
        .roomhost_arg("--room-idle-timeout=1s")
        .roomhost_arg(&clock())
        .start()
        .await;
    let admin = cluster.gateways[0].admin_url();
    let roomhost = &cluster.roomhosts[0];
    assert_eq!(invoke(&admin, &["clock-2", "remind", "t1", "3000"]), r#""t1""#);
    // No socket: after a second without events the room leaves memory.
    eventually("the room hibernated", || async {
        (metric(&roomhost.metrics, "rooms_roomhost_rooms_active").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(invoke(&admin, &["clock-2", "timers"]), "[]", "not due yet");
    // Woken from the alarm index when due, it runs timer("t1") and stores it.
    eventually("the timer fired", || async {
        (metric(&roomhost.metrics, "rooms_roomhost_class_alarms_fired_total").await == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(invoke(&admin, &["clock-2", "timers"]), r#"["t1"]"#);
}
