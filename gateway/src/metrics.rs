//! Prometheus metrics of the gateway, served as text on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rooms_telemetry::prometheus::{latency_histogram, render};

pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Counter,
    pub room_links: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub frames_rejected: Counter,
    pub rate_limited: Counter,
    pub send_queue_full: Counter,
    pub fanout_seconds: Histogram,
    pub e2e_seconds: Histogram,
    pub room_moves: Counter,
    pub room_move_pause_seconds: Histogram,
    pub redirects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rooms_gateway");
        let metrics = Self {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            room_links: Gauge::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            frames_rejected: Counter::default(),
            rate_limited: Counter::default(),
            send_queue_full: Counter::default(),
            fanout_seconds: latency_histogram(),
            e2e_seconds: latency_histogram(),
            room_moves: Counter::default(),
            room_move_pause_seconds: latency_histogram(),
            redirects: Counter::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        let r = &mut registry;
        r.register("connections_open", "Open client WebSockets", m.connections_open.clone());
        r.register("connections", "Client WebSockets accepted", m.connections_total.clone());
        r.register(
            "connections_refused",
            "Upgrades refused because the connection limit was reached",
            m.connections_refused.clone(),
        );
        r.register("room_links", "Open room streams to roomhosts", m.room_links.clone());
        r.register("frames_in", "Client frames received", m.frames_in.clone());
        r.register("frames_out", "Frames queued to client sockets", m.frames_out.clone());
        r.register(
            "frames_rejected",
            "Client frames refused as invalid (answered with an error frame)",
            m.frames_rejected.clone(),
        );
        r.register(
            "rate_limited",
            "Client frames dropped by the rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "send_queue_full",
            "Clients closed with 1013 because their send queue was full",
            m.send_queue_full.clone(),
        );
        r.register(
            "fanout_seconds",
            "Time to queue one batch of room frames to every local socket of the room",
            m.fanout_seconds.clone(),
        );
        r.register(
            "e2e_seconds",
            "Time from a chat frame read off a client socket until its stored event was queued to the room's local sockets",
            m.e2e_seconds.clone(),
        );
        r.register(
            "room_moves",
            "Room streams re-attached to another roomhost (handoff or crash)",
            m.room_moves.clone(),
        );
        r.register(
            "room_move_pause_seconds",
            "How long a room's frames were held while it moved",
            m.room_move_pause_seconds.clone(),
        );
        r.register(
            "redirects",
            "Redirects to a room's real owner followed (streams and Admin calls)",
            m.redirects.clone(),
        );
        Self { registry, ..metrics }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
