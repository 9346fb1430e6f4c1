//! HTTP endpoints: `/metrics` on the metrics address; `/healthz` and `/readyz` on the
//! health address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::edge::health::WatchHealth;
use crate::edge::metrics::SharedMetrics;

/// Ready when the caches have synced (or, with leader election, while standing by) and no
/// watch has been failing for `--watch-unhealthy-after`: a stale cache is not ready.
#[derive(Clone)]
pub struct Readiness {
    synced: Arc<AtomicBool>,
    watches: WatchHealth,
}

impl Readiness {
    pub fn new(watches: WatchHealth) -> Self {
        Readiness {
            synced: Arc::default(),
            watches,
        }
    }
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::SeqCst);
    }
    /// Why not ready, if not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.synced.load(Ordering::SeqCst) {
            return Err("caches not synced");
        }
        if !self.watches.healthy() {
            return Err("a watch cannot reach the API server");
        }
        Ok(())
    }
}

async fn metrics_text(State(metrics): State<SharedMetrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(ready): State<Readiness>) -> impl IntoResponse {
    match ready.check() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

pub async fn serve_metrics(addr: SocketAddr, metrics: SharedMetrics) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    serve(addr, app).await
}

pub async fn serve_health(addr: SocketAddr, ready: Readiness) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready);
    serve(addr, app).await
}

async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
