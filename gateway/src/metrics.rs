//! Prometheus metrics of the gateway, served as text on `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Open client WebSockets",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client WebSockets accepted",
            metrics.connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "Upgrades refused because the connection limit was reached",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "room_links",
            "Open room streams to roomhosts",
            metrics.room_links.clone(),
        );
        registry.register("frames_in", "Client frames received", metrics.frames_in.clone());
        registry.register(
            "frames_out",
            "Frames queued to client sockets",
            metrics.frames_out.clone(),
        );
        registry.register(
            "frames_rejected",
            "Client frames refused as invalid (answered with an error frame)",
            metrics.frames_rejected.clone(),
        );
        registry.register(
            "rate_limited",
            "Client frames dropped by the rate limit",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "send_queue_full",
            "Clients closed with 1013 because their send queue was full",
            metrics.send_queue_full.clone(),
        );
        Self { registry, ..metrics }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
