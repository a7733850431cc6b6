//! Prometheus metrics of the gateway, served as text on `/metrics`.

use prometheus_client::metrics::histogram::Histogram;
use rooms_telemetry::prometheus::{Counter, Gauge, latency_histogram};

rooms_telemetry::metrics! {
    pub struct Metrics("rooms_gateway") {
        connections_open: Gauge, "connections_open", "Open client WebSockets";
        connections_total: Counter, "connections", "Client WebSockets accepted";
        connections_refused: Counter, "connections_refused",
            "Upgrades refused because the connection limit was reached";
        room_links: Gauge, "room_links", "Open room streams to roomhosts";
        frames_in: Counter, "frames_in", "Client frames received";
        frames_out: Counter, "frames_out", "Frames queued to client sockets";
        frames_rejected: Counter, "frames_rejected",
            "Client frames refused as invalid (answered with an error frame)";
        rate_limited: Counter, "rate_limited", "Client frames dropped by the rate limit";
        send_queue_full: Counter, "send_queue_full",
            "Clients closed with 1013 because their send queue was full";
        fanout_seconds: Histogram = latency_histogram(), "fanout_seconds",
            "Time to queue one batch of room frames to every local socket of the room";
        e2e_seconds: Histogram = latency_histogram(), "e2e_seconds",
            "Time from a chat frame read off a client socket until its stored event was queued to the room's local sockets";
        room_moves: Counter, "room_moves",
            "Room streams re-attached to another roomhost (handoff or crash)";
        room_move_pause_seconds: Histogram = latency_histogram(), "room_move_pause_seconds",
            "How long a room's frames were held while it moved";
        redirects: Counter, "redirects",
            "Redirects to a room's real owner followed (streams and Admin calls)";
    }
}
