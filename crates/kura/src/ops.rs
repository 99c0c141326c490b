//! The ops endpoints of a `kura server` process without a gateway (a voter
//! or storage node): `/healthz`, `/readyz` and `/metrics` (Prometheus text,
//! the process's own recorder). A process with a gateway serves them from
//! the gateway, which adds `/repair`.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, roles: String) {
    let _ = kura_gateway::ops::metrics_handle();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let roles = roles.clone();
                async move { format!("ready: {roles}\n") }
            }),
        )
        .route("/metrics", get(metrics));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "ops server ended with an error");
    }
}

async fn metrics() -> (StatusCode, String) {
    match kura_gateway::ops::metrics_handle() {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".into(),
        ),
    }
}
