//! What an operator watches: both binaries' `/metrics` move with traffic and
//! room moves, the roomhost's health endpoints answer, and with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set one chat message is one trace spanning
//! gateway and roomhost (received here by a stand-in OTLP collector).

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use rooms_proto::admin::PublishRequest;
use rooms_proto::admin::admin_client::AdminClient;
use rooms_proto::server::ServerFrame;
use rooms_tests::client::{get, metric};
use rooms_tests::{TestCluster, eventually};

const ROOM: &str = "watched";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_room_moves() {
    let cluster = TestCluster::new(2, 1).file_membership().unthrottled().start().await;
    let gw = &cluster.gateways[0];
    for roomhost in &cluster.roomhosts {
        assert_eq!(get(&roomhost.metrics, "/healthz").await.0, 200);
        assert_eq!(get(&roomhost.metrics, "/readyz").await.0, 200);
        assert_eq!(get(&roomhost.metrics, "/nope").await.0, 404);
    }

    let mut ann = gw.join(ROOM, "ann").await;
    let mut bob = gw.join(ROOM, "bob").await;
    for i in 0..20 {
        ann.chat(&format!("m{i}"), &format!("id{i}")).await;
    }
    assert_eq!(bob.chats(20).await.len(), 20);
    assert_eq!(ann.chats(20).await.len(), 20);
    ann.send_text("{not json").await;
    assert_eq!(ann.error_code().await, "invalid_message");

    let http = &gw.http;
    assert_eq!(metric(http, "rooms_gateway_connections_open").await, 2.0);
    assert!(metric(http, "rooms_gateway_frames_in_total").await >= 21.0);
    assert!(metric(http, "rooms_gateway_frames_out_total").await >= 40.0);
    assert_eq!(metric(http, "rooms_gateway_frames_rejected_total").await, 1.0);
    assert!(metric(http, "rooms_gateway_e2e_seconds_count").await >= 20.0);
    assert!(metric(http, "rooms_gateway_e2e_seconds_sum").await > 0.0);
    // One fan-out per batch of frames (chats committed together share one).
    let fanouts = metric(http, "rooms_gateway_fanout_seconds_count").await;
    assert!((1.0..=22.0).contains(&fanouts), "{fanouts} fan-outs");
    assert_eq!(metric(http, "rooms_gateway_room_links").await, 1.0);

    let owner = cluster.owner_of(ROOM).await;
    let other = 1 - owner;
    let host = &cluster.roomhosts[owner].metrics;
    assert_eq!(metric(host, "rooms_roomhost_rooms_active").await, 1.0);
    assert_eq!(metric(host, "rooms_roomhost_connections").await, 2.0);
    assert_eq!(metric(host, "rooms_roomhost_gateway_streams").await, 1.0);
    assert!(metric(host, "rooms_roomhost_events_persisted_total").await >= 20.0);
    let commits = metric(host, "rooms_roomhost_redis_write_seconds_count").await;
    assert!((1.0..=20.0).contains(&commits), "{commits} commits for 20 events");
    assert_eq!(metric(host, "rooms_roomhost_redis_batch_events_count").await, commits);
    assert!(metric(host, "rooms_roomhost_redis_batch_events_sum").await >= 20.0);
    assert!(metric(host, "rooms_roomhost_event_seconds_count").await >= 20.0);
    assert!(metric(host, "rooms_roomhost_frames_in_total").await >= 20.0);

    // Every series the Grafana dashboard plots exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/rooms/dashboards/rooms.json"),
    )
    .expect("the dashboard");
    let pages = get(http, "/metrics").await.1 + &get(host, "/metrics").await.1;
    let mut plotted = 0;
    for name in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("rooms_") {
            plotted += 1;
            assert!(
                pages.contains(&format!("\n{name}")),
                "the dashboard plots {name}, never exported"
            );
        }
    }
    assert!(plotted >= 20, "{plotted} series in the dashboard");

    // Take the owner out of the ring: the room moves to the other roomhost.
    cluster.set_members(&[cluster.roomhosts[other].addr.clone()]).await;
    eventually("the room to move", || async {
        (metric(http, "rooms_gateway_room_moves_total").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(http, "rooms_gateway_room_move_pause_seconds_count").await, 1.0);
    assert_eq!(metric(host, "rooms_roomhost_room_moves_total").await, 1.0);
    assert_eq!(metric(host, "rooms_roomhost_room_move_seconds_count").await, 1.0);
    assert_eq!(metric(host, "rooms_roomhost_rooms_active").await, 0.0);
    assert_eq!(metric(host, "rooms_roomhost_connections").await, 0.0);
    let new_host = &cluster.roomhosts[other].metrics;
    assert_eq!(metric(new_host, "rooms_roomhost_rooms_active").await, 1.0);
    assert_eq!(metric(new_host, "rooms_roomhost_connections").await, 2.0);

    // The room still works after the move.
    ann.chat("after", "after").await;
    let chat = bob.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert!(matches!(chat, ServerFrame::Chat { seq: Some(21), .. }), "{chat:?}");
}

/// Spans received, with the `service.name` of the process that sent them.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, url)
    }

    /// A span named `child` from `child_service` whose parent is a span named
    /// `parent` from `parent_service`, in the same trace.
    fn linked(&self, parent: (&str, &str), child: (&str, &str)) -> Option<(Span, Span)> {
        let spans = self.spans.lock().unwrap();
        let named = |(service, name): (&str, &str), (s, span): &(String, Span)| {
            s == service && span.name == name
        };
        spans.iter().filter(|s| named(child, s)).find_map(|(_, c)| {
            spans
                .iter()
                .filter(|s| named(parent, s))
                .find(|(_, p)| p.trace_id == c.trace_id && p.span_id == c.parent_span_id)
                .map(|(_, p)| (p.clone(), c.clone()))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_gateway_and_roomhost() {
    let (collector, url) = Collector::start().await;
    let cluster = TestCluster::new(1, 1)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await;
    let gw = &cluster.gateways[0];
    let mut ann = gw.join(ROOM, "ann").await;
    ann.chat("traced", "t1").await;
    ann.until(|f| matches!(f, ServerFrame::Chat { .. })).await;

    let (parent, child) = eventually("a chat trace across both processes", || async {
        collector.linked(("rooms-gateway", "gateway.chat"), ("rooms-roomhost", "room.chat"))
    })
    .await;
    assert_eq!(parent.trace_id.len(), 16);
    assert!(parent.trace_id.iter().any(|b| *b != 0));
    assert_eq!(child.trace_id, parent.trace_id);

    // Operator calls carry their context in gRPC metadata.
    let mut admin = AdminClient::connect(gw.admin_url()).await.unwrap();
    let publish = PublishRequest {
        room: ROOM.into(),
        data_json: r#"{"note":"traced"}"#.into(),
        persist: Some(true),
    };
    assert_eq!(admin.publish(publish).await.unwrap().into_inner().seq, 2);
    eventually("an admin trace across both processes", || async {
        collector.linked(("rooms-gateway", "admin.publish"), ("rooms-roomhost", "roomhost.publish"))
    })
    .await;
}
