//! One room class's metrics, taken once from the roomhost's families
//! (labelled `class`), so that an event counts without a lookup.

use prometheus_client::metrics::histogram::Histogram;
use rooms_telemetry::prometheus::{Counter, Gauge};

use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct ClassMetrics {
    pub(crate) instances: Gauge,
    pub(crate) events: Counter,
    pub(crate) event_seconds: Histogram,
    pub(crate) start_seconds: Histogram,
    pub(crate) exceptions: Counter,
    pub(crate) resets: Counter,
    pub(crate) alarms_fired: Counter,
    pub(crate) alarm_retries: Counter,
    pub(crate) storage_bytes: Gauge,
}

impl ClassMetrics {
    pub(crate) fn of(metrics: &Metrics, class: &str) -> Self {
        let labels = vec![("class".to_owned(), class.to_owned())];
        Self {
            instances: metrics.class_instances.get_or_create(&labels).clone(),
            events: metrics.class_events.get_or_create(&labels).clone(),
            event_seconds: metrics.class_event_seconds.get_or_create(&labels).clone(),
            start_seconds: metrics.class_start_seconds.get_or_create(&labels).clone(),
            exceptions: metrics.class_exceptions.get_or_create(&labels).clone(),
            resets: metrics.class_resets.get_or_create(&labels).clone(),
            alarms_fired: metrics.class_alarms_fired.get_or_create(&labels).clone(),
            alarm_retries: metrics.class_alarm_retries.get_or_create(&labels).clone(),
            storage_bytes: metrics.class_storage_bytes.get_or_create(&labels).clone(),
        }
    }
}
