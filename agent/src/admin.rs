//! The admin port: `/livez`, `/readyz` and `/metrics`, apart from any gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// What the probes report.
pub struct Health {
    /// Every long-running task is running.
    pub alive: AtomicBool,
    /// The node's devices are published as they are now.
    pub ready: AtomicBool,
    pub metrics: PrometheusHandle,
}

impl Health {
    pub fn new(metrics: PrometheusHandle) -> Arc<Health> {
        Arc::new(Health {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            metrics,
        })
    }
}

fn probe(ok: bool, what: &str) -> (StatusCode, String) {
    if ok {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}\n"))
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/livez",
            get(|State(h): State<Arc<Health>>| async move { probe(h.alive.load(Ordering::SeqCst), "alive") }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move { probe(h.ready.load(Ordering::SeqCst), "ready") }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    h.metrics.render(),
                )
            }),
        )
        .with_state(health)
}

/// Serves until cancelled; keeps the histograms' upkeep going.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let upkeep = {
        let (h, c) = (health.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
            while !c.is_cancelled() {
                tokio::select! { _ = c.cancelled() => break, _ = t.tick() => h.metrics.run_upkeep() }
            }
        })
    };
    axum::serve(listener, router(health))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    upkeep.abort();
    Ok(())
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
