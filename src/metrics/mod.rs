//! Prometheus metrics (`[metrics]`): counters of events (API requests, platform services, store
//! writes) kept process-wide, and the state of one running arcd (rendezvous points, sessions,
//! WAL) read at scrape time. Served in the Prometheus text format on a listener of its own.
//!
//! Event counters are process-wide (one arcd serves per process) so that the store and the
//! services record without a handle threaded through every call; the data plane's counters are
//! the engine's own per-rendezvous-point atomics, read by `scrape::ArcdCollector`.

mod listener;
mod operations;
mod scrape;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use listener::{serve, MetricsServer};
pub use operations::operation_of;
pub use scrape::ArcdCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    operation: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s: API calls and store commits both live in this range.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Event counters of this process.
struct Events {
    api_requests: Family<ApiRequestLabels, Counter>,
    api_latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    harvest_entries: Family<ResultLabels, Counter>,
    beam_forwards: Family<ResultLabels, Counter>,
    funnel_deliveries: Family<ResultLabels, Counter>,
    funk_invocations: Family<ResultLabels, Counter>,
    dns_replies: Family<RcodeLabels, Counter>,
    metadata_requests: Family<ResultLabels, Counter>,
    endorse_requests: Family<ResultLabels, Counter>,
    store_write_seconds: Histogram,
    peer_change_propagation_seconds: Histogram,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    api_requests: Family::default(),
    api_latency: Family::new_with_constructor(latency_histogram),
    harvest_entries: Family::default(),
    beam_forwards: Family::default(),
    funnel_deliveries: Family::default(),
    funk_invocations: Family::default(),
    dns_replies: Family::default(),
    metadata_requests: Family::default(),
    endorse_requests: Family::default(),
    store_write_seconds: latency_histogram(),
    peer_change_propagation_seconds: latency_histogram(),
});

/// One finished API request; `operation` comes from `operation_of` (bounded set of values).
pub fn api_request(operation: &str, status: u16, elapsed: Duration) {
    EVENTS
        .api_requests
        .get_or_create(&ApiRequestLabels {
            operation: operation.to_string(),
            status,
        })
        .inc();
    EVENTS
        .api_latency
        .get_or_create(&OperationLabels {
            operation: operation.to_string(),
        })
        .observe(elapsed.as_secs_f64());
}

/// A Harvest Data entry stored (`written`) or not (`refused`: disabled, too large, bad, full).
pub fn harvest_entry(written: bool) {
    let result = if written { "written" } else { "refused" };
    EVENTS
        .harvest_entries
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// How a Beam request ended: `forwarded` (the destination answered), `not_configured`,
/// `upstream_error`, `timeout`.
pub fn beam_forward(result: &'static str) {
    EVENTS
        .beam_forwards
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// One Funnel delivery event: `delivered`, `retried`, `failed`, `dropped` (see
/// `services::funnel_delivery`).
pub fn funnel_delivery(result: &'static str) {
    EVENTS
        .funnel_deliveries
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// How a Funk invocation ended: `answered`, `disabled`, `invalid_json`, `upstream_error`,
/// `timeout`.
pub fn funk_invocation(result: &'static str) {
    EVENTS
        .funk_invocations
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// A metadata request by result: `ok`, `not_found`, `forbidden`, `bad_request`, `error`.
pub fn metadata_request(status: u16) {
    let result = match status {
        200..=299 => "ok",
        403 => "forbidden",
        404 => "not_found",
        400..=499 => "bad_request",
        _ => "error",
    };
    EVENTS
        .metadata_requests
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// An Endorse request by result: `issued` (a token, or the redirect carrying one), `forbidden`
/// (off for the caller's group, or no session behind the address), `bad_request`, `error`.
pub fn endorse_request(status: u16) {
    let result = match status {
        200..=399 => "issued",
        403 => "forbidden",
        400..=499 => "bad_request",
        _ => "error",
    };
    EVENTS
        .endorse_requests
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// A DNS reply sent to a device, counted by its response code (read from the header).
pub fn dns_reply(reply: &[u8]) {
    let rcode = match reply.get(3).map(|flags| flags & 0x0f) {
        Some(0) => "NOERROR",
        Some(1) => "FORMERR",
        Some(2) => "SERVFAIL",
        Some(3) => "NXDOMAIN",
        Some(4) => "NOTIMP",
        Some(5) => "REFUSED",
        _ => "other",
    };
    EVENTS
        .dns_replies
        .get_or_create(&RcodeLabels { rcode })
        .inc();
}

/// Time one store write transaction took, lock wait and commit included.
pub fn store_write(elapsed: Duration) {
    EVENTS.store_write_seconds.observe(elapsed.as_secs_f64());
}

/// A committed peer (or VPG) change reached this node's data plane `elapsed_ms` after the
/// writing transaction recorded it (clocks of two nodes may differ: a negative value counts as 0).
pub fn peer_change_propagated(elapsed_ms: i64) {
    EVENTS
        .peer_change_propagation_seconds
        .observe(elapsed_ms.max(0) as f64 / 1000.0);
}

/// The registry of one arcd: the process-wide event counters plus `collector`'s live state.
pub fn registry(collector: ArcdCollector) -> Registry {
    let mut registry = Registry::default();
    let events = &*EVENTS;
    // Every known result shows from the first scrape (as 0), so rates and alerts on them have a
    // series before the first event.
    for result in ["written", "refused"] {
        events
            .harvest_entries
            .get_or_create_owned(&ResultLabels { result });
    }
    for result in ["forwarded", "not_configured", "upstream_error", "timeout"] {
        events
            .beam_forwards
            .get_or_create_owned(&ResultLabels { result });
    }
    for result in ["delivered", "retried", "failed", "dropped"] {
        events
            .funnel_deliveries
            .get_or_create_owned(&ResultLabels { result });
    }
    for result in [
        "answered",
        "disabled",
        "invalid_json",
        "upstream_error",
        "timeout",
    ] {
        events
            .funk_invocations
            .get_or_create_owned(&ResultLabels { result });
    }
    for result in ["ok", "not_found", "forbidden", "bad_request", "error"] {
        events
            .metadata_requests
            .get_or_create_owned(&ResultLabels { result });
    }
    for result in ["issued", "forbidden", "bad_request", "error"] {
        events
            .endorse_requests
            .get_or_create_owned(&ResultLabels { result });
    }
    for rcode in [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    ] {
        events
            .dns_replies
            .get_or_create_owned(&RcodeLabels { rcode });
    }
    registry.register(
        "arcd_api_requests",
        "API requests by operation (operationId, or the route) and HTTP status",
        events.api_requests.clone(),
    );
    registry.register(
        "arcd_api_request_duration_seconds",
        "API request latency by operation, from the parsed request head to the response head",
        events.api_latency.clone(),
    );
    registry.register(
        "arcd_harvest_entries",
        "Harvest Data entries from devices by result (written, refused)",
        events.harvest_entries.clone(),
    );
    registry.register(
        "arcd_beam_requests",
        "Beam requests from devices by result (forwarded, not_configured, upstream_error, timeout)",
        events.beam_forwards.clone(),
    );
    registry.register(
        "arcd_funnel_deliveries",
        "Funnel deliveries by result (delivered, retried, failed, dropped: queue full)",
        events.funnel_deliveries.clone(),
    );
    registry.register(
        "arcd_funk_invocations",
        "Funk function invocations by result (answered, disabled, invalid_json, upstream_error, timeout)",
        events.funk_invocations.clone(),
    );
    registry.register(
        "arcd_dns_replies",
        "DNS replies to devices by response code",
        events.dns_replies.clone(),
    );
    registry.register(
        "arcd_metadata_requests",
        "Metadata service requests from devices by result",
        events.metadata_requests.clone(),
    );
    registry.register(
        "arcd_endorse_requests",
        "Endorse token requests from devices by result",
        events.endorse_requests.clone(),
    );
    registry.register(
        "arcd_store_write_duration_seconds",
        "Store write transactions, waits, retries and commit included",
        events.store_write_seconds.clone(),
    );
    registry.register(
        "arcd_peer_change_propagation_seconds",
        "Committed peer and VPG changes, from the writing transaction to this node's data plane (outbox follower)",
        events.peer_change_propagation_seconds.clone(),
    );
    registry.register_collector(Box::new(collector));
    registry
}
