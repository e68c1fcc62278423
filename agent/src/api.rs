//! The Kubernetes API clients. Every request is bounded in time (a request
//! hung on a dead pooled connection fails and is retried instead of holding
//! a lock, a lease or a heartbeat forever); watches are not (they are meant
//! to stay open, and kube's watcher has its own idle timeout).

use std::time::Duration;

use anyhow::Context;
use kube::Client;

/// The two clients: same server and credentials, two connection pools.
#[derive(Clone)]
pub struct Clients {
    /// Requests that get one answer: each gives up after the timeout.
    pub requests: Client,
    /// Watches: no read timeout.
    pub watches: Client,
}

/// How long connecting may take, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Clients {
    pub fn new(config: kube::Config, timeout: Duration) -> anyhow::Result<Clients> {
        anyhow::ensure!(!timeout.is_zero(), "--api-timeout must be more than 0");
        let mut requests = config.clone();
        requests.connect_timeout = Some(CONNECT_TIMEOUT.min(timeout));
        requests.read_timeout = Some(timeout);
        requests.write_timeout = Some(timeout);
        // From when the request is sent, not from when its pooled
        // connection went idle.
        requests.reset_reader_on_write = true;
        let mut watches = config;
        watches.connect_timeout = Some(CONNECT_TIMEOUT);
        Ok(Clients {
            requests: Client::try_from(requests).context("the Kubernetes API client")?,
            watches: Client::try_from(watches).context("the Kubernetes API client")?,
        })
    }

    /// From the pod's service account, or KUBECONFIG.
    pub async fn infer(timeout: Duration) -> anyhow::Result<Clients> {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes API: run in a pod, or set KUBECONFIG")?;
        Clients::new(config, timeout)
    }
}
