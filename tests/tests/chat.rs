//! Clients on different gateways share rooms: names, chat, echo, total order,
//! isolation, history and resume, persistence across restarts.

use rooms_proto::server::ServerFrame;
use rooms_tests::{Client, TestCluster};
use serde_json::json;

fn chat_seq(frame: &ServerFrame) -> u64 {
    frame.seq().expect("chat has a seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_gateways_see_each_others_names_and_chat() {
    let cluster = TestCluster::new(2, 2).start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut ann = a.join("lobby", "ann").await;
    let mut bob = b.join("lobby", "bob").await;
    // Ann sees Bob arrive.
    let joined = ann.until(|f| matches!(f, ServerFrame::Join { .. })).await;
    assert_eq!(joined, ServerFrame::Join { user_id: "bob".into(), name: "bob".into() });

    ann.send_json(json!({"type": "name", "name": "  Ann Lee "})).await;
    for client in [&mut ann, &mut bob] {
        match client.until(|f| matches!(f, ServerFrame::Name { .. })).await {
            ServerFrame::Name { user_id, name, seq } => {
                assert_eq!((user_id.as_str(), name.as_str(), seq), ("ann", "Ann Lee", 1));
            }
            _ => unreachable!(),
        }
    }

    bob.chat("hello ann", "bob-1").await;
    for client in [&mut ann, &mut bob] {
        match client.until(|f| matches!(f, ServerFrame::Chat { .. })).await {
            ServerFrame::Chat { seq, id, user_id, text, time, .. } => {
                assert_eq!(seq, Some(2));
                assert_eq!(id.as_deref(), Some("bob-1"), "the client id is echoed");
                assert_eq!((user_id.as_str(), text.as_str()), ("bob", "hello ann"));
                assert!(time.is_some_and(|t| t.ends_with('Z')));
            }
            _ => unreachable!(),
        }
    }
    ann.chat("hi bob", "").await;
    let frame = bob.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    match frame {
        ServerFrame::Chat { user_name, id, .. } => {
            assert_eq!(user_name.as_deref(), Some("Ann Lee"), "chat carries the stored name");
            assert!(
                id.is_some_and(|id| !id.is_empty()),
                "a server-made id when the client gave none"
            );
        }
        _ => unreachable!(),
    }

    // A late joiner's welcome lists both present users with names.
    let (_carl, welcome, _) = Client::join(&a.ws_url("lobby", "user=carl")).await;
    match welcome {
        ServerFrame::Welcome { room, user_id, seq, users, epoch } => {
            assert_eq!((room.as_str(), user_id.as_str(), seq), ("lobby", "carl", 3));
            assert!(!epoch.is_empty());
            let mut names: Vec<(String, String)> =
                users.into_iter().map(|u| (u.user_id, u.name)).collect();
            names.sort();
            assert_eq!(
                names,
                [
                    ("ann".into(), "Ann Lee".into()),
                    ("bob".into(), "bob".into()),
                    ("carl".into(), "carl".into())
                ]
            );
        }
        other => panic!("{other:?}"),
    }

    // Bob leaving is seen by Ann.
    bob.close().await;
    let left = ann.until(|f| matches!(f, ServerFrame::Leave { .. })).await;
    assert_eq!(left, ServerFrame::Leave { user_id: "bob".into(), name: "bob".into() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_messages_from_two_gateways_arrive_in_one_total_order() {
    let cluster = TestCluster::new(2, 2).unthrottled().start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut s1 = a.join("order", "s1").await;
    let mut s2 = b.join("order", "s2").await;
    let mut watcher_a = a.join("order", "wa").await;
    let mut watcher_b = b.join("order", "wb").await;

    let send = |mut client: Client, who: &'static str| async move {
        for i in 0..150 {
            client.chat(&format!("{who}-{i}"), &format!("{who}-{i}")).await;
        }
        client
    };
    let (s1_back, s2_back) = tokio::join!(send(s1, "s1"), send(s2, "s2"));
    s1 = s1_back;
    s2 = s2_back;

    let mut orders = Vec::new();
    for client in [&mut s1, &mut s2, &mut watcher_a, &mut watcher_b] {
        let chats = client.chats(300).await;
        let seqs: Vec<u64> = chats.iter().map(chat_seq).collect();
        let first = seqs[0];
        assert_eq!(seqs, (first..first + 300).collect::<Vec<_>>(), "contiguous seq");
        let texts: Vec<String> = chats
            .into_iter()
            .map(|c| match c {
                ServerFrame::Chat { text, .. } => text,
                _ => unreachable!(),
            })
            .collect();
        for who in ["s1", "s2"] {
            let own: Vec<&String> = texts.iter().filter(|t| t.starts_with(who)).collect();
            let expected: Vec<String> = (0..150).map(|i| format!("{who}-{i}")).collect();
            assert_eq!(own, expected.iter().collect::<Vec<_>>(), "{who}'s own order is kept");
        }
        orders.push(texts);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "every client sees the same total order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_of_one_room_reaches_another() {
    let cluster = TestCluster::new(2, 2).start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut in_a = a.join("room-a", "ann").await;
    let mut in_b = b.join("room-b", "bob").await;
    let mut in_b2 = a.join("room-b", "bea").await;
    for i in 0..20 {
        in_a.chat(&format!("only for a {i}"), "").await;
    }
    in_b.chat("only for b", "").await;
    // Room B's clients see B's message and nothing of A's.
    for client in [&mut in_b, &mut in_b2] {
        let frame = client.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
        match frame {
            ServerFrame::Chat { text, seq, .. } => {
                assert_eq!(text, "only for b");
                assert_eq!(seq, Some(1), "room B has its own seq");
            }
            _ => unreachable!(),
        }
    }
    let chats = in_a.chats(20).await;
    assert!(
        chats
            .iter()
            .all(|c| matches!(c, ServerFrame::Chat { text, .. } if text.starts_with("only for a")))
    );
    // Nothing else is pending for room B (A's last message was sent before B's).
    match in_b2.next_within(std::time::Duration::from_millis(300)).await {
        None => {}
        Some(rooms_tests::client::Received::Frame(
            ServerFrame::Join { .. } | ServerFrame::Leave { .. },
        )) => {}
        other => panic!("unexpected in room B: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_others_and_is_never_stored() {
    let cluster = TestCluster::new(1, 2).start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut ann = a.join("typing", "ann").await;
    let mut ann_tab2 = a.join("typing", "ann").await;
    let mut bob = b.join("typing", "bob").await;
    ann.send_json(json!({"type": "typing"})).await;
    assert_eq!(bob.frame().await, ServerFrame::Typing { user_id: "ann".into() });
    assert_eq!(
        ann_tab2.until(|f| matches!(f, ServerFrame::Typing { .. })).await,
        ServerFrame::Typing { user_id: "ann".into() },
        "the user's other connection sees it too"
    );
    // The sending connection does not get its own typing back: the next thing
    // it sees (after Bob's arrival) is its chat.
    ann.chat("done typing", "").await;
    let next = ann.until(|f| !matches!(f, ServerFrame::Join { .. })).await;
    assert!(matches!(next, ServerFrame::Chat { .. }), "{next:?}");
    let (_late, hello, history) = Client::join(&b.ws_url("typing", "user=late")).await;
    assert!(matches!(hello, ServerFrame::Welcome { seq: 1, .. }), "only the chat got a seq");
    assert!(matches!(history, ServerFrame::History { messages, .. } if messages.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_message_id_is_stored_once_and_echoed_to_its_sender() {
    let cluster = TestCluster::new(1, 2).start().await;
    let mut ann = cluster.gateways[0].join("dedup", "ann").await;
    let mut bob = cluster.gateways[1].join("dedup", "bob").await;
    ann.chat("hello once", "msg-1").await;
    let first = ann.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    // The client did not see its echo in time (say) and sends again.
    ann.chat("hello once", "msg-1").await;
    let again = ann.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert_eq!(first, again, "the sender gets the stored event again, same seq");
    ann.chat("next", "msg-2").await;
    let chats = bob.chats(2).await;
    let seen: Vec<(Option<u64>, String)> = chats
        .into_iter()
        .map(|c| match c {
            ServerFrame::Chat { seq, text, .. } => (seq, text),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        seen,
        [(Some(1), "hello once".to_owned()), (Some(2), "next".to_owned())],
        "others see it once"
    );
    // Another user may use the same id.
    bob.chat("mine", "msg-1").await;
    let mine = bob.until(|f| matches!(f, ServerFrame::Chat { text, .. } if text == "mine")).await;
    assert_eq!(mine.seq(), Some(3));
}

/// A chat a gateway sends again after its stream broke (marked resent) that
/// the room already stored is answered by its tag alone: the sender got the
/// event through the resume and must not see it twice. A client's own
/// resend of a stored id gets the original event back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_chat_resent_by_a_gateway_is_acknowledged_without_its_echo() {
    use rooms_proto::host::{Chat, gateway_frame, host_frame};
    use rooms_tests::fake_gateway::FakeGateway;

    let cluster = TestCluster::new(1, 0).start().await;
    let mut ann = FakeGateway::attach(&cluster.roomhosts[0].addr, "resent", "ann").await;
    let chat = |tag, resent| {
        gateway_frame::Kind::Chat(Chat {
            conn: 1,
            text: "hello".into(),
            id: "m1".into(),
            tag,
            resent,
            ..Chat::default()
        })
    };
    let tagged = |tag: u64| {
        move |kind: &host_frame::Kind| match kind {
            host_frame::Kind::Broadcast(b) => b.tags.contains(&tag),
            host_frame::Kind::Direct(d) => d.tags.contains(&tag),
            _ => false,
        }
    };
    ann.send(chat(1, false)).await;
    let stored = ann.until(tagged(1)).await;
    assert!(matches!(stored, host_frame::Kind::Broadcast(b) if b.frames.len() == 1));
    ann.send(chat(2, true)).await;
    match ann.until(tagged(2)).await {
        host_frame::Kind::Direct(d) => assert!(d.frames.is_empty(), "no second echo"),
        other => panic!("{other:?}"),
    }
    ann.send(chat(3, false)).await;
    match ann.until(tagged(3)).await {
        host_frame::Kind::Direct(d) => assert_eq!(d.frames.len(), 1, "the original, to its sender"),
        other => panic!("{other:?}"),
    }
}

/// What one client believes is present: its welcome's users, then every
/// `join` and `leave` it is sent, in order, until `until` arrives.
async fn presence_view(client: &mut Client, me: &str, welcome: &ServerFrame) -> Vec<String> {
    let ServerFrame::Welcome { users, .. } = welcome else { panic!("{welcome:?}") };
    let mut present: std::collections::BTreeSet<String> =
        users.iter().map(|u| u.user_id.clone()).collect();
    loop {
        match client.frame().await {
            ServerFrame::Join { user_id, .. } => {
                assert_ne!(user_id, me, "{me} was sent its own join");
                assert!(
                    present.insert(user_id.clone()),
                    "{me} was told twice that {user_id} joined"
                );
            }
            ServerFrame::Leave { user_id, .. } => {
                assert!(present.remove(&user_id), "{me} was told {user_id} left, never present");
            }
            ServerFrame::Chat { text, .. } if text == "end" => {
                return present.into_iter().collect();
            }
            other => panic!("{me} got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_join_storm_every_client_is_told_exactly_who_is_present() {
    // Presence in a storm is gathered at the gateways; whatever the timing,
    // each client must end up knowing the room's members, having been told
    // of each arrival and departure once, never of itself.
    let cluster = TestCluster::new(1, 2).start().await;
    let joins = (0..48).map(|i| {
        let gateway = &cluster.gateways[i % 2];
        let user = format!("u{i:02}");
        async move {
            let (client, welcome, _) =
                Client::join(&gateway.ws_url("storm", &format!("user={user}"))).await;
            (user, client, welcome)
        }
    });
    let mut clients = futures_util::future::join_all(joins).await;
    // A third leave again at once, while the others are still arriving.
    let leaving: Vec<_> = clients.drain(..16).collect();
    futures_util::future::join_all(leaving.into_iter().map(|(_, client, _)| client.close())).await;
    // Once the room has processed every join and leave, a chat ends each view.
    let expected: Vec<String> = clients.iter().map(|(user, ..)| user.clone()).collect();
    cluster.await_connections("storm", expected.len()).await;
    clients[0].1.chat("end", "").await;
    for (user, client, welcome) in &mut clients {
        assert_eq!(presence_view(client, user, welcome).await, expected, "{user}'s view");
    }
}
