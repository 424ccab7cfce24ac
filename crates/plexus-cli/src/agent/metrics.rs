//! The agent's metrics endpoint: `GET /metrics` on the configured address answers with the
//! node's figures ([`plexus::Metrics`]) in the Prometheus text format.
//!
//! Names follow Prometheus conventions (a `plexus_` prefix, base units, `_total` on
//! counters). Labels are bounded: `peer` takes the cluster's members (only peers that
//! proved membership are counted), `cause` a fixed set of names, `direction` two values.
//! Every scrape builds the families afresh from one snapshot, so the figures of a scrape
//! are consistent with each other.

use std::net::SocketAddr;

use plexus::{Metrics, Node};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, String)>;

/// A histogram whose buckets were counted elsewhere (by the node's core).
#[derive(Debug)]
struct Counted {
    sum: f64,
    count: u64,
    /// `(upper bound, count in this bucket alone)`, `f64::MAX` last for `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, gauge),
        None => registry.register(name, help, gauge),
    }
}

/// Jobs whose waiting producers get a series of their own (the longest waits): labels
/// stay bounded whatever number of jobs starve.
const STARVING_JOBS_SHOWN: usize = 20;

/// The node's figures, the channels starving now, and the busiest jobs, in the Prometheus
/// text format.
pub fn render(m: &Metrics, starving: &[plexus::Starving], busiest: &[plexus::JobStatus]) -> String {
    let mut r = Registry::with_prefix("plexus");
    let peer = |p: &plexus::NodeId| vec![("peer", p.0.to_string())];
    let sent = counter_family(
        &mut r,
        "peer_sent",
        "Bytes written to links to the peer",
        Some(Unit::Bytes),
    );
    let received = counter_family(
        &mut r,
        "peer_received",
        "Bytes read from links from the peer",
        Some(Unit::Bytes),
    );
    let msgs_sent = counter_family(
        &mut r,
        "peer_sent_messages",
        "Messages sent to the peer",
        None,
    );
    let msgs_received = counter_family(
        &mut r,
        "peer_received_messages",
        "Messages received from the peer",
        None,
    );
    let resumes = counter_family(
        &mut r,
        "peer_resumes",
        "Times the peer's link came back and its session resumed",
        None,
    );
    let down = Family::<Labels, Counter<f64>>::default();
    r.register_with_unit(
        "peer_down",
        "Time the peer's link was down before it resumed",
        Unit::Seconds,
        down.clone(),
    );
    for (p, c) in &m.counters.peers {
        sent.get_or_create(&peer(p)).inc_by(c.bytes_sent);
        received.get_or_create(&peer(p)).inc_by(c.bytes_received);
        msgs_sent.get_or_create(&peer(p)).inc_by(c.messages_sent);
        msgs_received
            .get_or_create(&peer(p))
            .inc_by(c.messages_received);
        resumes.get_or_create(&peer(p)).inc_by(c.resumes);
        down.get_or_create(&peer(p)).inc_by(c.down.as_secs_f64());
    }
    let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    r.register_with_unit(
        "peer_rtt",
        "The latest measured round trip to the peer (pings go out on quiet links)",
        Unit::Seconds,
        rtt.clone(),
    );
    for (p, c) in &m.counters.peers {
        if let Some(d) = c.rtt {
            rtt.get_or_create(&peer(p)).set(d.as_secs_f64());
        }
    }
    let link_up = Family::<Labels, Gauge>::default();
    r.register(
        "peer_link_up",
        "Whether a link to the peer is up (1) or not (0)",
        link_up.clone(),
    );
    for (p, up) in &m.links {
        link_up.get_or_create(&peer(p)).set(i64::from(*up));
    }
    let dead = counter_family(&mut r, "peers_dead", "Peers declared dead, by cause", None);
    for (cause, n) in &m.counters.peers_dead {
        dead.get_or_create(&vec![("cause", (*cause).to_string())])
            .inc_by(*n);
    }
    gauge(
        &mut r,
        "jobs_active",
        "Jobs with a record on this node",
        None,
        m.stats.jobs as i64,
    );
    let completed = Counter::<u64>::default();
    completed.inc_by(m.counters.jobs_completed);
    r.register(
        "jobs_completed",
        "Jobs that ended on this node without an error",
        completed,
    );
    let failed = counter_family(
        &mut r,
        "jobs_failed",
        "Jobs that ended on this node with an error, by cause",
        None,
    );
    for (cause, n) in &m.counters.jobs_failed {
        failed
            .get_or_create(&vec![("cause", (*cause).to_string())])
            .inc_by(*n);
    }
    gauge(
        &mut r,
        "admission_waiting",
        "Jobs waiting for admission on this node",
        None,
        m.admission_waiting as i64,
    );
    let waits = &m.counters.admission_waits;
    let mut buckets = Vec::new();
    let mut below = 0;
    for (bound, cumulative) in plexus::ADMISSION_WAIT_BUCKETS.iter().zip(waits.buckets) {
        buckets.push((*bound, cumulative - below));
        below = cumulative;
    }
    buckets.push((f64::MAX, waits.count - below));
    r.register_with_unit(
        "admission_wait",
        "How long admitted jobs waited for admission",
        Unit::Seconds,
        Counted {
            sum: waits.sum,
            count: waits.count,
            buckets,
        },
    );
    gauge(
        &mut r,
        "buffered",
        "Bytes buffered: queued to send, kept until acknowledged, and credit granted",
        Some(Unit::Bytes),
        m.buffered_bytes as i64,
    );
    if let Some(budget) = m.memory_budget {
        gauge(
            &mut r,
            "memory_budget",
            "The most the node may buffer",
            Some(Unit::Bytes),
            budget as i64,
        );
    }
    let channels = Family::<Labels, Gauge>::default();
    r.register(
        "channels_open",
        "Channels open, by direction",
        channels.clone(),
    );
    channels
        .get_or_create(&vec![("direction", "out".into())])
        .set(m.stats.out_channels as i64);
    channels
        .get_or_create(&vec![("direction", "in".into())])
        .set(m.stats.in_channels as i64);
    gauge(
        &mut r,
        "channels_parked",
        "Incoming channels waiting for their consumer",
        None,
        m.stats.parked_channels as i64,
    );
    gauge(
        &mut r,
        "links_up",
        "Links carrying traffic",
        None,
        m.stats.links_up as i64,
    );
    gauge(
        &mut r,
        "attached_processes",
        "Processes attached through the local socket",
        None,
        m.attached_processes as i64,
    );
    let blocked = Counter::<f64>::default();
    blocked.inc_by(m.counters.producers_blocked.as_secs_f64());
    r.register_with_unit(
        "producers_blocked",
        "Time producers here waited for credit, summed over channels, for waits that ended",
        Unit::Seconds,
        blocked,
    );
    let waiting = Family::<Labels, Gauge>::default();
    r.register(
        "job_producer_channels_waiting",
        "Channels whose producer here waits for credit now, per job (the jobs with the longest waits)",
        waiting.clone(),
    );
    let mut jobs: Vec<plexus::JobId> = Vec::new();
    for s in starving {
        if !jobs.contains(&s.job) {
            if jobs.len() == STARVING_JOBS_SHOWN {
                continue;
            }
            jobs.push(s.job);
        }
        waiting
            .get_or_create(&vec![("job", s.job.0.to_string())])
            .inc();
    }
    let job_blocked = Family::<Labels, Counter<f64>>::default();
    r.register_with_unit(
        "job_producers_blocked",
        "Time producers here waited for credit, per job, for waits that ended (the busiest jobs)",
        Unit::Seconds,
        job_blocked.clone(),
    );
    for job in busiest.iter().take(STARVING_JOBS_SHOWN) {
        job_blocked
            .get_or_create(&vec![("job", job.job.to_string())])
            .inc_by(job.producers_blocked_ms as f64 / 1000.0);
    }
    let refused = Counter::<u64>::default();
    refused.inc_by(m.counters.unauthenticated);
    r.register(
        "unauthenticated_connections",
        "Connections closed because they did not prove membership",
        refused,
    );
    let cut = Counter::<u64>::default();
    cut.inc_by(m.counters.limits_exceeded);
    r.register(
        "members_cut_off",
        "Members whose link closed because they went beyond a limit",
        cut,
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &r);
    text
}

/// Serves `GET /metrics` for `node` on `addr` from a thread of its own, until the process
/// ends.
pub fn serve(addr: SocketAddr, node: Node) -> Result<(), String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    );
                    let text = render(&node.metrics(), &node.starving(), &node.status().jobs);
                    let mut response = tiny_http::Response::from_string(text);
                    if let Ok(header) = header {
                        response.add_header(header);
                    }
                    response
                } else {
                    tiny_http::Response::from_string("not found: try /metrics\n")
                        .with_status_code(404)
                };
                // A scraper that went away is no concern of the node's.
                let _ = request.respond(response);
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(())
}
