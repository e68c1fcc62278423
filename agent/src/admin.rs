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
    /// The kubelet plugin runs: readiness then also needs the kubelet's
    /// registration.
    pub plugin: AtomicBool,
    /// The kubelet accepted our registration.
    pub registered: AtomicBool,
    /// Our gRPC sockets answered the last self-check.
    pub sockets_ok: AtomicBool,
    pub metrics: PrometheusHandle,
    /// Metrics computed at scrape time (the controller's fleet view).
    pub extra: std::sync::Mutex<Option<Collector>>,
}

/// Appends Prometheus text to a scrape.
pub type Collector = Box<dyn Fn(&mut String) + Send + Sync>;

impl Health {
    pub fn new(metrics: PrometheusHandle) -> Arc<Health> {
        Arc::new(Health {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            plugin: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            sockets_ok: AtomicBool::new(true),
            metrics,
            extra: std::sync::Mutex::new(None),
        })
    }
}

impl Health {
    /// The recorder's metrics, then the scrape-time ones.
    pub fn render(&self) -> String {
        let mut out = self.metrics.render();
        if let Some(extra) = self.extra.lock().unwrap().as_ref() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            extra(&mut out);
        }
        out
    }

    /// `Err(why)` unless every task runs and our sockets answer.
    pub fn live(&self) -> Result<(), &'static str> {
        if !self.alive.load(Ordering::SeqCst) {
            return Err("not alive: a task stopped");
        }
        if !self.sockets_ok.load(Ordering::SeqCst) {
            return Err("not alive: the kubelet plugin sockets do not answer");
        }
        Ok(())
    }

    /// `Err(why)` until the devices are published (and, with the kubelet
    /// plugin, the kubelet has registered it).
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err("not ready: the devices are not published yet");
        }
        if self.plugin.load(Ordering::SeqCst) && !self.registered.load(Ordering::SeqCst) {
            return Err("not ready: the kubelet has not registered the plugin");
        }
        Ok(())
    }
}

fn probe(r: Result<(), &'static str>) -> (StatusCode, String) {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/livez",
            get(|State(h): State<Arc<Health>>| async move { probe(h.live()) }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move { probe(h.ready()) }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    h.render(),
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
