//! Prometheus metrics: requests by route and status, bytes served, publishes by outcome,
//! errors by kind.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use qx_core::api::server::ROUTES;

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

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_served: Counter,
    pub publishes: Family<OutcomeLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
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
        Self {
            registry,
            requests,
            bytes_served,
            publishes,
            errors,
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
