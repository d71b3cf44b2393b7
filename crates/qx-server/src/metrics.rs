//! Prometheus metrics: requests by route and status, bytes served, publishes by outcome,
//! errors by kind; the fleet's check-ins, events by type, ingest latency, and hosts by
//! product/channel/version, state and liveness (read from the fleet store on scrape, at most
//! once per [`FLEET_GAUGE_TTL`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use qx_core::api::server::ROUTES;
use qx_core::fleet::{CheckInReason, EventType, RolloutStage};

use crate::fleet::store::{FleetCounts, FleetStore, LivenessRule, Millis, StageCount};

/// How long the fleet gauges read on a scrape are reused: scrapes cost at most one count
/// query per this period, whatever their rate.
pub const FLEET_GAUGE_TTL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

/// Route labels are the router's templates ([`qx_core::api::server::ROUTES`]), so that
/// labels need no allocation per request; a request no route matched is `unmatched`.
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("unmatched")
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub product: String,
    pub channel: String,
    pub component: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub product: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LivenessLabels {
    pub liveness: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutHostLabels {
    pub rollout: String,
    pub wave: u32,
    pub stage: String,
}

type HistogramFamily = Family<IngestLabels, Histogram, fn() -> Histogram>;

/// Ingest latency buckets: 0.25 ms to about 1 s, doubling.
fn ingest_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 13))
}

/// The fleet's metrics (docs/spec.md §9).
pub struct FleetMetrics {
    pub checkins: Family<ReasonLabels, Counter>,
    /// Events received in accepted batches, by type (replays included: see `duplicates`).
    pub events: Family<TypeLabels, Counter>,
    /// Events of accepted batches the store already held (a replay): not stored again.
    pub duplicates: Counter,
    pub ingest: HistogramFamily,
    pub hosts: Family<VersionLabels, Gauge>,
    pub hosts_by_state: Family<StateLabels, Gauge>,
    pub hosts_by_liveness: Family<LivenessLabels, Gauge>,
    /// When the host gauges were last read from the store.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_served: Counter,
    pub publishes: Family<OutcomeLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub fleet: FleetMetrics,
    /// Hosts per rollout, wave and stage (refreshed at each rollout tick).
    pub rollout_hosts: Family<RolloutHostLabels, Gauge>,
    /// Halts recorded by this server, by rule (`max_failures`, `max_failure_rate`).
    pub rollout_halts: Family<ReasonLabels, Counter>,
}

/// The wire name of a fleet enum (its serde name: `rolled_back`, `boot`, `overdue`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "other".to_owned(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qx");
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_served = Counter::default();
        let publishes = Family::<OutcomeLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "served_bytes",
            "Bytes of manifests and artifacts sent in response bodies",
            bytes_served.clone(),
        );
        registry.register(
            "publishes",
            "Publish and promote requests by outcome (created, identical, conflict, rejected, failed)",
            publishes.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (client = 4xx, server = 5xx, stream = a body that failed mid-way)",
            errors.clone(),
        );
        let fleet = FleetMetrics::register(&mut registry);
        let rollout_hosts = Family::<RolloutHostLabels, Gauge>::default();
        let rollout_halts = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rollout_hosts",
            "Hosts of each unfinished rollout by wave and stage",
            rollout_hosts.clone(),
        );
        registry.register(
            "rollout_halts",
            "Rollout halts recorded by this server, by rule",
            rollout_halts.clone(),
        );
        Self {
            registry,
            requests,
            bytes_served,
            publishes,
            errors,
            fleet,
            rollout_hosts,
            rollout_halts,
        }
    }

    pub fn publish(&self, outcome: &str) {
        self.publishes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a check-in handled in `took`.
    pub fn check_in(&self, reason: CheckInReason, took: Duration) {
        let reason = wire_name(&reason);
        self.fleet
            .checkins
            .get_or_create(&ReasonLabels { reason })
            .inc();
        self.fleet.ingest("checkin", took);
    }

    /// Counts an event batch handled in `took`: its events by type, and how many of them
    /// the store already held.
    pub fn events(&self, kinds: &[EventType], duplicates: u64, took: Duration) {
        for kind in kinds {
            let r#type = wire_name(kind);
            self.fleet
                .events
                .get_or_create(&TypeLabels { r#type })
                .inc();
        }
        self.fleet.duplicates.inc_by(duplicates);
        self.fleet.ingest("events", took);
    }

    /// Reads the host gauges from `store` unless they were read less than
    /// [`FLEET_GAUGE_TTL`] ago; a failed read keeps the previous values (and is logged).
    pub async fn refresh_fleet(&self, store: &dyn FleetStore, rule: LivenessRule, now: Millis) {
        let mut refreshed = self.fleet.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < FLEET_GAUGE_TTL) {
            return;
        }
        *refreshed = Some(Instant::now());
        match store.counts(rule, now, now).await {
            Ok(counts) => self.fleet.set_hosts(&counts),
            Err(e) => tracing::warn!(error = %e, "the fleet gauges were not refreshed"),
        }
    }

    /// Sets the host gauges of one rollout (every wave and stage, zeros included).
    pub fn rollout_stages(&self, rollout: &str, waves: usize, counts: &[StageCount]) {
        for wave in 0..waves {
            for stage in RolloutStage::ALL {
                let hosts = counts
                    .iter()
                    .filter(|c| c.wave as usize == wave && c.stage == stage)
                    .map(|c| c.hosts)
                    .sum::<u64>();
                let labels = RolloutHostLabels {
                    rollout: rollout.to_owned(),
                    wave: u32::try_from(wave).unwrap_or(u32::MAX),
                    stage: wire_name(&stage),
                };
                let value = i64::try_from(hosts).unwrap_or(i64::MAX);
                self.rollout_hosts.get_or_create(&labels).set(value);
            }
        }
    }

    /// Counts a halt this server recorded.
    pub fn rollout_halt(&self, rule: &str) {
        self.rollout_halts
            .get_or_create(&ReasonLabels {
                reason: rule.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl FleetMetrics {
    fn register(registry: &mut Registry) -> Self {
        let fleet = Self {
            checkins: Family::default(),
            events: Family::default(),
            duplicates: Counter::default(),
            ingest: HistogramFamily::new_with_constructor(ingest_histogram),
            hosts: Family::default(),
            hosts_by_state: Family::default(),
            hosts_by_liveness: Family::default(),
            refreshed: tokio::sync::Mutex::new(None),
        };
        let r = registry.sub_registry_with_prefix("fleet");
        r.register(
            "checkins",
            "Host check-ins stored, by reason (check, boot)",
            fleet.checkins.clone(),
        );
        r.register(
            "events",
            "Host events received in accepted batches, by type (replayed ones included)",
            fleet.events.clone(),
        );
        r.register(
            "duplicate_events",
            "Events of accepted batches already stored (replays, counted once in the store)",
            fleet.duplicates.clone(),
        );
        r.register(
            "ingest_seconds",
            "Handling time of accepted check-ins and event batches (kind = checkin, events)",
            fleet.ingest.clone(),
        );
        r.register(
            "hosts",
            "Enrolled hosts (not decommissioned) by product, channel, component and installed version",
            fleet.hosts.clone(),
        );
        r.register(
            "hosts_by_state",
            "Enrolled hosts (not decommissioned) by product and update state",
            fleet.hosts_by_state.clone(),
        );
        r.register(
            "hosts_by_liveness",
            "Enrolled hosts (not decommissioned) by liveness (online, overdue, offline)",
            fleet.hosts_by_liveness.clone(),
        );
        fleet
    }

    fn ingest(&self, kind: &'static str, took: Duration) {
        self.ingest
            .get_or_create(&IngestLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// Replaces the host gauges with `counts` (label sets no longer counted disappear).
    fn set_hosts(&self, counts: &FleetCounts) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.hosts.clear();
        for ((product, channel, component, version), n) in &counts.by_version {
            let labels = VersionLabels {
                product: product.clone(),
                channel: channel.clone(),
                component: component.clone(),
                version: version.clone(),
            };
            self.hosts.get_or_create(&labels).set(gauge(*n));
        }
        self.hosts_by_state.clear();
        for ((product, state), n) in &counts.by_state {
            let labels = StateLabels {
                product: product.clone(),
                state: state.clone(),
            };
            self.hosts_by_state.get_or_create(&labels).set(gauge(*n));
        }
        self.hosts_by_liveness.clear();
        for (liveness, n) in &counts.by_liveness {
            let liveness = wire_name(liveness);
            self.hosts_by_liveness
                .get_or_create(&LivenessLabels { liveness })
                .set(gauge(*n));
        }
    }
}

/// Middleware counting every request by method, matched route and status.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    if status >= 500 {
        metrics.error("server");
    } else if status >= 400 {
        metrics.error("client");
    }
    res
}
