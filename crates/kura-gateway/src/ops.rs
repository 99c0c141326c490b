//! The ops port: plain HTTP for Kubernetes probes and Prometheus, apart from
//! the gRPC port so a probe never competes with (or needs) client traffic.
//!
//! - `GET /healthz`: the process serves (liveness).
//! - `GET /readyz`: the gateway can reach the metadata cluster and knows the
//!   cluster map (readiness); 503 with the reason otherwise.
//! - `GET /metrics`: every metric of the process in the Prometheus text
//!   format.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::Inner;

/// Histogram buckets (seconds) for every `_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide Prometheus recorder, installed on first use. `None` if
/// another recorder was installed first.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets refused; using summaries");
                    PrometheusBuilder::new()
                }
            };
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .clone()
}

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/repair", get(repair))
        .with_state(inner)
}

async fn ready(State(inner): State<Arc<Inner>>) -> (StatusCode, String) {
    match inner.cluster.state().await {
        Ok(s) => (
            StatusCode::OK,
            format!("ready: cluster map epoch {}\n", s.map.epoch),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// The repair loop's status as JSON (404 when repair runs elsewhere).
async fn repair(State(inner): State<Arc<Inner>>) -> (StatusCode, String) {
    match inner.repair.get() {
        Some(h) => match serde_json::to_string_pretty(&h.status()) {
            Ok(json) => (StatusCode::OK, json + "\n"),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        None => (
            StatusCode::NOT_FOUND,
            "repair does not run in this gateway\n".into(),
        ),
    }
}

async fn metrics() -> (StatusCode, String) {
    match metrics_handle() {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".into(),
        ),
    }
}

/// Exports `kura_tls_cert_expiry_days` (days until the first of this
/// process's certificates, or the CA, expires) and keeps it current.
pub fn export_cert_expiry(
    m: std::sync::Arc<kura_auth::TlsMaterial>,
) -> tokio::task::JoinHandle<()> {
    let _ = metrics_handle();
    tokio::spawn(async move {
        loop {
            metrics::gauge!("kura_tls_cert_expiry_days").set(m.days_left());
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    })
}
