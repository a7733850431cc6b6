//! Prometheus pieces both binaries share: latency and size buckets, the
//! text exposition, and [`metrics!`](crate::metrics), which declares a set
//! of metrics and registers each under its name in one place.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
pub use prometheus_client::registry::Registry;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latencies from 50 µs to about 13 s (doubling).
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Counts from 1 to 4096 (doubling): batch sizes.
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// Several rendered pages as one: each ends with `# EOF`, which may only
/// end the whole exposition.
pub fn concat(pages: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for page in pages {
        out.push_str(page.strip_suffix("# EOF\n").unwrap_or(&page));
    }
    out.push_str("# EOF\n");
    out
}

/// Declares a struct of metrics, each a public field, registered under a
/// name prefix; `new()` builds and registers them, `render()` exposes them.
///
/// ```ignore
/// metrics! {
///     pub struct Metrics("rooms_gateway") {
///         connections_open: Gauge, "connections_open", "Open client WebSockets";
///         fanout_seconds: Histogram = latency_histogram(), "fanout_seconds", "…";
///     }
/// }
/// ```
/// Counters get Prometheus' `_total` suffix when exposed.
#[macro_export]
macro_rules! metrics {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($prefix:literal) {
            $( $field:ident : $ty:ty $(= $init:expr)?, $metric:literal, $help:literal; )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            registry: $crate::prometheus::Registry,
            $( pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            pub fn new() -> Self {
                let mut registry = $crate::prometheus::Registry::with_prefix($prefix);
                $(
                    let $field: $ty = $crate::metrics!(@init $ty $(, $init)?);
                    registry.register($metric, $help, $field.clone());
                )*
                Self { registry, $( $field, )* }
            }

            pub fn render(&self) -> String {
                $crate::prometheus::render(&self.registry)
            }
        }
    };
    (@init $ty:ty) => { <$ty>::default() };
    (@init $ty:ty, $init:expr) => { $init };
}
