//! Prometheus metrics of the roomhost, served as text on `/metrics` of
//! `--metrics-listen`.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rooms_telemetry::prometheus::{Counter, Gauge, latency_histogram, size_histogram};

rooms_telemetry::metrics! {
    pub struct Metrics("rooms_roomhost") {
        rooms_active: Gauge, "rooms_active", "Rooms held in memory";
        rooms_loaded: Counter, "rooms_loaded", "Rooms loaded from the store (lease taken)";
        rooms_evicted: Counter, "rooms_evicted", "Idle rooms evicted from memory (hibernated)";
        room_moves: Counter, "room_moves", "Rooms handed over to another roomhost";
        room_move_seconds: Histogram = latency_histogram(), "room_move_seconds",
            "Time from the start of a handoff until the new owner was named";
        gateway_streams: Gauge, "gateway_streams", "Open room streams from gateways";
        connections: Gauge, "connections", "Client connections in rooms held here";
        frames_in: Counter, "frames_in", "Frames received on room streams";
        events_persisted: Counter, "events_persisted", "Events stored (chat, name, system)";
        broadcasts: Counter, "broadcasts", "Frame batches sent to gateways";
        event_seconds: Histogram = latency_histogram(), "event_seconds",
            "Time from a client frame reaching the room until its stored event was sent to the gateways";
        redis_write_seconds: Histogram = latency_histogram(), "redis_write_seconds",
            "Duration of one group commit (one Redis round trip)";
        redis_batch_events: Histogram = size_histogram(), "redis_batch_events",
            "Events per group commit";
        commit_failures: Counter, "commit_failures",
            "Group commits that failed (senders told unavailable)";
        leases_lost: Counter, "leases_lost", "Commits refused because the room's lease was gone";
        redirects: Counter, "redirects",
            "Requests answered with the address of the room's real owner";
        gateways_dropped: Counter, "gateways_dropped",
            "Gateway streams dropped from a room because their queue was full";
        class_instances: PerClass<Gauge>, "class_instances",
            "Room class instances in memory (a hibernated room keeps its sockets at the gateways, without one), per class";
        class_events: PerClass<Counter>, "class_events", "Events run by room classes' instances, per class";
        class_event_seconds: PerClass<Histogram, fn() -> Histogram> = Family::new_with_constructor(latency_histogram),
            "class_event_seconds", "How long room class handlers ran, per class";
        class_start_seconds: PerClass<Histogram, fn() -> Histogram> = Family::new_with_constructor(latency_histogram),
            "class_start_seconds", "Starting a room class instance on its thread (engine, bundle evaluated, constructor run), per class";
        class_exceptions: PerClass<Counter>, "class_exceptions",
            "Events in which a room class threw (what it did before stands), per class";
        class_resets: PerClass<Counter>, "class_resets",
            "Room class instances discarded (over a limit, stalled, or writes not stored) and rebuilt from storage on the next event, per class";
        class_alarms_fired: PerClass<Counter>, "class_alarms_fired", "Alarms and timers of room classes fired, per class";
        class_alarm_retries: PerClass<Counter>, "class_alarm_retries",
            "Alarms and timers of room classes whose handler failed, scheduled again with a backoff, per class";
        class_storage_bytes: PerClass<Gauge>, "class_storage_bytes",
            "Stored bytes (keys and values) of the class rooms this roomhost holds, per class";
    }
}

/// A metric per room class, labelled `class`.
pub type PerClass<M, C = fn() -> M> = Family<Vec<(String, String)>, M, C>;
