//! Prometheus metrics of the roomhost, served as text on `/metrics` of
//! `--metrics-listen`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rooms_telemetry::prometheus::{latency_histogram, render, size_histogram};

pub struct Metrics {
    registry: Registry,
    pub rooms_active: Gauge,
    pub rooms_loaded: Counter,
    pub rooms_evicted: Counter,
    pub room_moves: Counter,
    pub room_move_seconds: Histogram,
    pub gateway_streams: Gauge,
    pub connections: Gauge,
    pub frames_in: Counter,
    pub events_persisted: Counter,
    pub broadcasts: Counter,
    pub event_seconds: Histogram,
    pub redis_write_seconds: Histogram,
    pub redis_batch_events: Histogram,
    pub commit_failures: Counter,
    pub leases_lost: Counter,
    pub redirects: Counter,
    pub gateways_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rooms_roomhost");
        let metrics = Self {
            rooms_active: Gauge::default(),
            rooms_loaded: Counter::default(),
            rooms_evicted: Counter::default(),
            room_moves: Counter::default(),
            room_move_seconds: latency_histogram(),
            gateway_streams: Gauge::default(),
            connections: Gauge::default(),
            frames_in: Counter::default(),
            events_persisted: Counter::default(),
            broadcasts: Counter::default(),
            event_seconds: latency_histogram(),
            redis_write_seconds: latency_histogram(),
            redis_batch_events: size_histogram(),
            commit_failures: Counter::default(),
            leases_lost: Counter::default(),
            redirects: Counter::default(),
            gateways_dropped: Counter::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        let r = &mut registry;
        r.register("rooms_active", "Rooms held in memory", m.rooms_active.clone());
        r.register(
            "rooms_loaded",
            "Rooms loaded from the store (lease taken)",
            m.rooms_loaded.clone(),
        );
        r.register(
            "rooms_evicted",
            "Idle rooms evicted from memory (hibernated)",
            m.rooms_evicted.clone(),
        );
        r.register("room_moves", "Rooms handed over to another roomhost", m.room_moves.clone());
        r.register(
            "room_move_seconds",
            "Time from the start of a handoff until the new owner was named",
            m.room_move_seconds.clone(),
        );
        r.register("gateway_streams", "Open room streams from gateways", m.gateway_streams.clone());
        r.register("connections", "Client connections in rooms held here", m.connections.clone());
        r.register("frames_in", "Frames received on room streams", m.frames_in.clone());
        r.register(
            "events_persisted",
            "Events stored (chat, name, system)",
            m.events_persisted.clone(),
        );
        r.register("broadcasts", "Frame batches sent to gateways", m.broadcasts.clone());
        r.register(
            "event_seconds",
            "Time from a client frame reaching the room until its stored event was sent to the gateways",
            m.event_seconds.clone(),
        );
        r.register(
            "redis_write_seconds",
            "Duration of one group commit (one Redis round trip)",
            m.redis_write_seconds.clone(),
        );
        r.register("redis_batch_events", "Events per group commit", m.redis_batch_events.clone());
        r.register(
            "commit_failures",
            "Group commits that failed (senders told unavailable)",
            m.commit_failures.clone(),
        );
        r.register(
            "leases_lost",
            "Commits refused because the room's lease was gone",
            m.leases_lost.clone(),
        );
        r.register(
            "redirects",
            "Requests answered with the address of the room's real owner",
            m.redirects.clone(),
        );
        r.register(
            "gateways_dropped",
            "Gateway streams dropped from a room because their queue was full",
            m.gateways_dropped.clone(),
        );
        Self { registry, ..metrics }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
