//! What svcdns counts, and its export in Prometheus text format (`/metrics`).
//!
//! Counters are bumped from the UDP threads, the tokio workers (TCP, the Catalog,
//! registrations) and the registry's writer, so they are one process-wide set rather
//! than a handle threaded through every constructor: a process is one svcdns server.
//!
//! DNS answers are counted on the hot path, at every query, so each thread counts into
//! a shard of its own (plain relaxed adds on cache lines no other thread writes); a
//! scrape sums the shards. A thread that ends folds its shard into a retired one, so
//! nothing it counted is lost and shards do not pile up. Everything else is rare
//! enough for shared atomics or a mutex.
//!
//! The registry's gauges (instances, services) are read from its latest snapshot at
//! scrape time, not counted: they cannot drift from what DNS serves.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::dns::front::Transport;
use crate::dns::wire::WireName;
use crate::registry::{Reason, Registry};

/// Query types counted by name; every other type is counted as `other`.
const QUERY_TYPES: [(u16, &str); 12] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
];
const TYPE_SLOTS: usize = QUERY_TYPES.len() + 1;
const TYPE_NONE: usize = QUERY_TYPES.len();

/// Response codes counted by name (the header's four bits: BADVERS, which lives in the
/// OPT record, is counted as NOERROR); others as `other`.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
const RCODE_OTHER: usize = RCODES.len() - 1;
/// The response codes of DNS UPDATE (RFC 2136 §2.2: 0 to 10, by value), then any other.
const UPDATE_RCODES: [&str; 12] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "other",
];

const TRANSPORTS: [(Transport, &str); 2] = [(Transport::Udp, "udp"), (Transport::Tcp, "tcp")];

/// Upper bounds of the answer latency buckets, in nanoseconds: from the fast path's
/// microseconds to a forwarded query's seconds.
const LATENCY_BOUNDS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Registration ops counted by name; a line with no valid op counts as `none`.
const OPS: [&str; 10] = [
    "register",
    "renew",
    "deregister",
    "mark",
    "list",
    "watch",
    "snapshot",
    "auth",
    "ping",
    "none",
];

/// One thread's DNS counters.
struct Shard {
    /// Answers by transport, question type and response code.
    answers: [[[AtomicU64; RCODES.len()]; TYPE_SLOTS]; 2],
    /// Answer latency histogram by transport (non-cumulative buckets) and its sum.
    latency: [[AtomicU64; LATENCY_SLOTS]; 2],
    latency_sum_ns: [AtomicU64; 2],
}

impl Shard {
    fn new() -> Shard {
        Shard {
            answers: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_ns: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds `other`'s counts to this shard's.
    fn absorb(&self, other: &Shard) {
        let add = |into: &AtomicU64, from: &AtomicU64| {
            into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for (into, from) in self.answers.iter().zip(&other.answers) {
            for (into, from) in into.iter().zip(from) {
                for (into, from) in into.iter().zip(from) {
                    add(into, from);
                }
            }
        }
        for (into, from) in self.latency.iter().zip(&other.latency) {
            for (into, from) in into.iter().zip(from) {
                add(into, from);
            }
        }
        for (into, from) in self.latency_sum_ns.iter().zip(&other.latency_sum_ns) {
            add(into, from);
        }
    }
}

/// The process's counters, outside the per-thread shards.
struct Counters {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// What threads that ended had counted.
    retired: Shard,
    dropped_catalog_busy: AtomicU64,
    dropped_panics: AtomicU64,
    tcp_refused: AtomicU64,
    registration_refused: AtomicU64,
    rate_dropped: AtomicU64,
    rate_slipped: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    /// Registration requests by op: answered ok, refused.
    requests_ok: [AtomicU64; OPS.len()],
    requests_failed: [AtomicU64; OPS.len()],
    /// Refusals by error code.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    changes: [AtomicU64; Reason::ALL.len()],
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    store_failures: AtomicU64,
    /// DNS UPDATE responses, by response code (`UPDATE_RCODES`).
    updates: [AtomicU64; UPDATE_RCODES.len()],
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| Counters {
        shards: Mutex::new(Vec::new()),
        retired: Shard::new(),
        dropped_catalog_busy: AtomicU64::new(0),
        dropped_panics: AtomicU64::new(0),
        tcp_refused: AtomicU64::new(0),
        registration_refused: AtomicU64::new(0),
        rate_dropped: AtomicU64::new(0),
        rate_slipped: AtomicU64::new(0),
        forwarded: AtomicU64::new(0),
        forward_failures: AtomicU64::new(0),
        requests_ok: std::array::from_fn(|_| AtomicU64::new(0)),
        requests_failed: std::array::from_fn(|_| AtomicU64::new(0)),
        errors: Mutex::new(BTreeMap::new()),
        changes: std::array::from_fn(|_| AtomicU64::new(0)),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        store_failures: AtomicU64::new(0),
        updates: std::array::from_fn(|_| AtomicU64::new(0)),
    })
}

/// A lock whose holder cannot leave the data half-changed (plain counters): a panic
/// elsewhere while it was held does not make the counts unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This thread's shard, registered on first use, folded into the retired counts when
/// the thread ends.
struct ShardHandle(Arc<Shard>);

impl Drop for ShardHandle {
    fn drop(&mut self) {
        let counters = counters();
        let mut shards = lock(&counters.shards);
        shards.retain(|shard| !Arc::ptr_eq(shard, &self.0));
        counters.retired.absorb(&self.0);
    }
}

thread_local! {
    static SHARD: OnceCell<ShardHandle> = const { OnceCell::new() };
}

fn with_shard(count: impl FnOnce(&Shard)) {
    // During thread teardown the shard may be gone already; that count is lost.
    let _ = SHARD.try_with(|cell| {
        let handle = cell.get_or_init(|| {
            let shard = Arc::new(Shard::new());
            lock(&counters().shards).push(shard.clone());
            ShardHandle(shard)
        });
        count(&handle.0);
    });
}

/// Adds `n` to a counter of this thread's shard. Only the owning thread writes its
/// shard, so a plain load and store does, without the locked instruction of an atomic
/// add; scrapes read it with relaxed loads.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

/// Counts a DNS response by its question's type and its response code, read from the
/// response itself, so every path (fast, Catalog, forwarded) is counted alike.
pub fn count_answer(response: &[u8], transport: Transport) {
    let (type_slot, rcode_slot) = classify(response);
    with_shard(|shard| {
        bump(
            &shard.answers[transport_index(transport)][type_slot][rcode_slot],
            1,
        );
    });
}

/// Records `answers` answers that each took `elapsed` from receipt to a response
/// ready to send (a UDP batch's answers leave together, so they share one figure).
pub fn observe_latency(transport: Transport, elapsed: Duration, answers: u64) {
    if answers == 0 {
        return;
    }
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let slot = LATENCY_BOUNDS_NS
        .iter()
        .position(|&bound| nanos <= bound)
        .unwrap_or(LATENCY_BOUNDS_NS.len());
    let t = transport_index(transport);
    with_shard(|shard| {
        bump(&shard.latency[t][slot], answers);
        bump(&shard.latency_sum_ns[t], nanos.saturating_mul(answers));
    });
}

/// Counts one answer and its latency.
pub fn answered(response: &[u8], transport: Transport, elapsed: Duration) {
    count_answer(response, transport);
    observe_latency(transport, elapsed, 1);
}

/// The type slot of the first question and the rcode slot of a DNS message.
fn classify(message: &[u8]) -> (usize, usize) {
    let Some(header) = message.get(..12) else {
        return (TYPE_NONE, RCODE_OTHER);
    };
    let rcode = usize::from(header[3] & 0x0f);
    let rcode_slot = if rcode < RCODE_OTHER {
        rcode
    } else {
        RCODE_OTHER
    };
    let type_slot = WireName::first_question(message)
        .and_then(|(record_type, _)| {
            QUERY_TYPES
                .iter()
                .position(|(code, _)| *code == record_type)
        })
        .unwrap_or(TYPE_NONE);
    (type_slot, rcode_slot)
}

/// A UDP query dropped because too many were already waiting for the Catalog.
pub fn dropped_catalog_busy() {
    counters()
        .dropped_catalog_busy
        .fetch_add(1, Ordering::Relaxed);
}

/// A UDP response held back by `dns.rate_limit`: dropped, or sent truncated (slipped).
pub fn rate_limited(slipped: bool) {
    let counters = counters();
    let counter = if slipped {
        &counters.rate_slipped
    } else {
        &counters.rate_dropped
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A query dropped because answering it panicked (a bug).
pub fn dropped_panic() {
    counters().dropped_panics.fetch_add(1, Ordering::Relaxed);
}

/// A registration connection closed on accept: `registration.max_connections` reached.
pub fn registration_refused() {
    counters()
        .registration_refused
        .fetch_add(1, Ordering::Relaxed);
}

/// A DNS-over-TCP connection closed on accept: `dns.tcp_max_connections` reached.
pub fn tcp_refused() {
    counters().tcp_refused.fetch_add(1, Ordering::Relaxed);
}

/// A query for a name outside our zones, sent to the upstreams (or their cache).
pub fn forwarded() {
    counters().forwarded.fetch_add(1, Ordering::Relaxed);
}

/// A forwarded query that no upstream answered (SERVFAIL).
pub fn forward_failed() {
    counters().forward_failures.fetch_add(1, Ordering::Relaxed);
}

fn op_index(op: Option<&str>) -> usize {
    op.and_then(|op| OPS.iter().position(|known| *known == op))
        .unwrap_or(OPS.len() - 1)
}

/// A registration request answered `ok`.
pub fn request_succeeded(op: &str) {
    counters().requests_ok[op_index(Some(op))].fetch_add(1, Ordering::Relaxed);
}

/// A registration request refused with `code`.
pub fn request_failed(op: Option<&str>, code: &'static str) {
    let counters = counters();
    counters.requests_failed[op_index(op)].fetch_add(1, Ordering::Relaxed);
    *lock(&counters.errors).entry(code).or_insert(0) += 1;
}

/// A registry change (registration, expiry, release, mark…) published.
pub fn registry_changed(reason: Reason) {
    counters().changes[reason.index()].fetch_add(1, Ordering::Relaxed);
}

/// A commit to the durable store that failed.
pub fn store_failed() {
    counters().store_failures.fetch_add(1, Ordering::Relaxed);
}

/// A DNS UPDATE answered with response code `rcode` (the TSIG errors are NOTAUTH).
pub fn update_answered(rcode: u16) {
    let slot = usize::from(rcode).min(UPDATE_RCODES.len() - 1);
    counters().updates[slot].fetch_add(1, Ordering::Relaxed);
}

/// A SIGHUP reload, applied or refused.
pub fn reloaded(ok: bool) {
    let counters = counters();
    let counter = if ok {
        &counters.reloads_ok
    } else {
        &counters.reloads_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The `/metrics` page: the counters above and the registry's gauges.
pub struct Exporter {
    registry: MetricsRegistry,
}

impl Exporter {
    pub fn new(registry: Registry) -> Exporter {
        let mut metrics = MetricsRegistry::default();
        metrics.register_collector(Box::new(Snapshot { registry }));
        Exporter { registry: metrics }
    }

    /// The page, in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut page = String::new();
        // Writing to a String cannot fail, and our collector reports no errors of its own.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut page, &self.registry);
        page
    }

    /// The `Content-Type` of [`Exporter::render`]'s page.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
}

/// Reads every counter at scrape time.
struct Snapshot {
    registry: Registry,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("svcdns metrics")
    }
}

/// Sums every live shard and the retired one.
fn dns_totals() -> Shard {
    let counters = counters();
    let total = Shard::new();
    total.absorb(&counters.retired);
    for shard in lock(&counters.shards).iter() {
        total.absorb(shard);
    }
    total
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = counters();
        let dns = dns_totals();

        let mut family = encoder.encode_descriptor(
            "svcdns_dns_responses",
            "DNS responses sent, by transport, question type and response code",
            None,
            MetricType::Counter,
        )?;
        for (t, (_, transport)) in TRANSPORTS.iter().enumerate() {
            for (type_slot, by_rcode) in dns.answers[t].iter().enumerate() {
                let record_type = QUERY_TYPES
                    .get(type_slot)
                    .map_or("other", |(_, name)| *name);
                for (rcode_slot, count) in by_rcode.iter().enumerate() {
                    let value = load(count);
                    if value == 0 {
                        continue;
                    }
                    let labels = [
                        ("transport", *transport),
                        ("type", record_type),
                        ("rcode", RCODES[rcode_slot]),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "svcdns_dns_response_duration_seconds",
            "Time from a query's receipt to its response being ready to send",
            None,
            MetricType::Histogram,
        )?;
        for (t, (_, transport)) in TRANSPORTS.iter().enumerate() {
            // Per-bucket counts: the encoder makes them cumulative.
            let buckets: Vec<(f64, u64)> = dns.latency[t]
                .iter()
                .enumerate()
                .map(|(slot, count)| {
                    let bound = LATENCY_BOUNDS_NS
                        .get(slot)
                        .map_or(f64::INFINITY, |ns| *ns as f64 / 1e9);
                    (bound, load(count))
                })
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = load(&dns.latency_sum_ns[t]) as f64 / 1e9;
            let labels = [("transport", *transport)];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "svcdns_dns_dropped",
            "UDP queries dropped unanswered, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in [
            ("catalog_busy", &counters.dropped_catalog_busy),
            ("panic", &counters.dropped_panics),
            ("rate_limit", &counters.rate_dropped),
        ] {
            ConstCounter::new(load(count)).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        counter(
            &mut encoder,
            "svcdns_dns_rate_limit_slipped",
            "UDP responses over dns.rate_limit sent truncated, so the client retries over TCP",
            load(&counters.rate_slipped),
        )?;
        counter(
            &mut encoder,
            "svcdns_dns_tcp_refused_connections",
            "DNS-over-TCP connections closed on accept: dns.tcp_max_connections reached",
            load(&counters.tcp_refused),
        )?;
        counter(
            &mut encoder,
            "svcdns_registration_refused_connections",
            "Registration connections closed on accept with too_many_connections: registration.max_connections reached",
            load(&counters.registration_refused),
        )?;
        counter(
            &mut encoder,
            "svcdns_forwarded_queries",
            "Queries for names outside our zones sent to the forward upstreams (or answered from their cache)",
            load(&counters.forwarded),
        )?;
        counter(
            &mut encoder,
            "svcdns_forward_failures",
            "Forwarded queries no upstream answered (SERVFAIL with an Extended DNS Error)",
            load(&counters.forward_failures),
        )?;

        let mut family = encoder.encode_descriptor(
            "svcdns_registration_requests",
            "Registration protocol requests, by op and outcome",
            None,
            MetricType::Counter,
        )?;
        for (index, op) in OPS.iter().enumerate() {
            for (outcome, count) in [
                ("ok", &counters.requests_ok[index]),
                ("error", &counters.requests_failed[index]),
            ] {
                let value = load(count);
                if value > 0 {
                    let labels = [("op", *op), ("outcome", outcome)];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let errors: Vec<(&'static str, u64)> = lock(&counters.errors)
            .iter()
            .map(|(code, count)| (*code, *count))
            .collect();
        let mut family = encoder.encode_descriptor(
            "svcdns_registration_errors",
            "Registration requests refused, by error code",
            None,
            MetricType::Counter,
        )?;
        for (code, value) in errors {
            ConstCounter::new(value).encode(family.encode_family(&[("code", code)])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "svcdns_registry_changes",
            "Changes published to the registry, by reason (expired: leases that ran out)",
            None,
            MetricType::Counter,
        )?;
        for reason in Reason::ALL {
            let value = load(&counters.changes[reason.index()]);
            ConstCounter::new(value)
                .encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "svcdns_dns_updates",
            "DNS UPDATE requests answered, by response code (NOERROR: made; the TSIG errors are NOTAUTH)",
            None,
            MetricType::Counter,
        )?;
        for (rcode, count) in UPDATE_RCODES.iter().zip(&counters.updates) {
            let value = load(count);
            if value > 0 {
                ConstCounter::new(value).encode(family.encode_family(&[("rcode", *rcode)])?)?;
            }
        }

        let snapshot = self.registry.snapshot();
        let (mut healthy, mut critical, mut services) = (0, 0, 0);
        for zone in snapshot.zones() {
            let (zone_healthy, zone_critical) = zone.instance_counts();
            healthy += zone_healthy;
            critical += zone_critical;
            services += zone.service_count();
        }
        let mut family = encoder.encode_descriptor(
            "svcdns_instances",
            "Registered instances, by health (critical ones are in no answer)",
            None,
            MetricType::Gauge,
        )?;
        for (health, value) in [("healthy", healthy), ("critical", critical)] {
            ConstGauge::new(value as i64).encode(family.encode_family(&[("health", health)])?)?;
        }
        gauge(
            &mut encoder,
            "svcdns_services",
            "Service names with at least one registered instance",
            services as i64,
        )?;

        counter(
            &mut encoder,
            "svcdns_store_commit_failures",
            "Batches the durable store could not commit (their changes were refused: store_unavailable)",
            load(&counters.store_failures),
        )?;
        let mut family = encoder.encode_descriptor(
            "svcdns_config_reloads",
            "Reloads of zones and upstreams on SIGHUP, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, count) in [
            ("ok", &counters.reloads_ok),
            ("error", &counters.reloads_failed),
        ] {
            ConstCounter::new(load(count))
                .encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        encoder
            .encode_descriptor(
                "svcdns_build",
                "The running svcdns version",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_classified_by_question_type_and_rcode() {
        // ID, flags (response, NXDOMAIN), one question: svc.internal. SRV IN.
        let mut message = vec![0, 1, 0x84, 0x03, 0, 1, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(b"\x03svc\x08internal\x00\x00\x21\x00\x01");
        assert_eq!(classify(&message), (8, 3));
        message[3] = 0x0a; // NOTZONE: not named
        assert_eq!(classify(&message), (8, RCODE_OTHER));
        message[5] = 0; // no question
        assert_eq!(classify(&message), (TYPE_NONE, RCODE_OTHER));
        assert_eq!(classify(&message[..5]), (TYPE_NONE, RCODE_OTHER));
        message[5] = 1;
        assert_eq!(classify(&message[..20]), (TYPE_NONE, RCODE_OTHER));
    }

    #[test]
    fn a_finished_thread_keeps_its_counts() {
        let before = load(&dns_totals().latency[1][LATENCY_SLOTS - 1]);
        std::thread::spawn(|| observe_latency(Transport::Tcp, Duration::from_secs(60), 3))
            .join()
            .unwrap();
        let after = load(&dns_totals().latency[1][LATENCY_SLOTS - 1]);
        assert!(after >= before + 3, "{before} -> {after}");
    }
}
