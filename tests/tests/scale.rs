//! Many rooms through one gateway: each is its own gRPC stream over the one
//! HTTP/2 connection to the roomhost, far past HTTP/2's default stream limits.

use futures_util::future::join_all;
use rooms_proto::server::ServerFrame;
use rooms_tests::{Client, TestCluster};

const ROOMS: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_holds_thousands_of_room_streams_to_one_roomhost() {
    let cluster = TestCluster::new(1, 1).start().await;
    let gw = &cluster.gateways[0];
    let mut clients = Vec::with_capacity(ROOMS);
    for chunk in (0..ROOMS).collect::<Vec<_>>().chunks(100) {
        let urls: Vec<String> =
            chunk.iter().map(|i| gw.ws_url(&format!("many-{i}"), "user=u")).collect();
        let joins = urls.iter().map(|url| Client::join(url));
        clients.extend(join_all(joins).await.into_iter().map(|(client, _, _)| client));
    }
    // Every room stream is live at once: a chat round-trips in each.
    for (i, client) in clients.iter_mut().enumerate() {
        client.chat(&format!("hello {i}"), "").await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        match client.until(|f| matches!(f, ServerFrame::Chat { .. })).await {
            ServerFrame::Chat { text, seq, .. } => {
                assert_eq!(text, format!("hello {i}"));
                assert_eq!(seq, Some(1));
            }
            _ => unreachable!(),
        }
    }
    let (status, body) = rooms_tests::client::get(&gw.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains(&format!("rooms_gateway_room_links {ROOMS}")), "{body}");
}
