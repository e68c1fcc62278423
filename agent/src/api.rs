//! The Kubernetes API clients. Every request is bounded in time (a request
//! hung on a dead pooled connection fails and is retried instead of holding
//! a lock, a lease or a heartbeat forever); watches are not (they are meant
//! to stay open, and kube's watcher has its own idle timeout).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, info};

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

/// The ServiceAccount these credentials are, as the owner of what the agent
/// creates in `namespace` (its Leases): the garbage collector deletes them
/// with it, so `helm uninstall` leaves none behind. From a SelfSubjectReview
/// (every authenticated client may ask who it is; a service account's user
/// uid is the ServiceAccount's uid). None for credentials that are not a
/// service account of that namespace (a kubeconfig), or when the server
/// cannot say (the Leases are then left for whoever deletes the namespace).
pub async fn service_account_owner(client: &Client, namespace: &str) -> Option<OwnerReference> {
    let review = match Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "no SelfSubjectReview: the Leases get no owner");
            return None;
        }
    };
    let user = review.status?.user_info?;
    let owner = service_account_of(user.username.as_deref()?, namespace, user.uid?)?;
    info!(service_account = %owner.name, "the Leases are owned by this ServiceAccount (deleted with it)");
    Some(owner)
}

/// Adds `owner` to an object's owner references unless it is there already
/// (an object written before the agent knew its owner gets it at its next
/// write).
pub fn add_owner(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) {
    if let Some(o) = owner
        && !meta.owner_references.iter().flatten().any(|r| r.uid == o.uid)
    {
        meta.owner_references.get_or_insert_with(Vec::new).push(o.clone());
    }
}

/// `system:serviceaccount:<namespace>:<name>` of `namespace` → its owner reference.
fn service_account_of(username: &str, namespace: &str, uid: String) -> Option<OwnerReference> {
    let (ns, name) = username.strip_prefix("system:serviceaccount:")?.split_once(':')?;
    (ns == namespace && !name.is_empty() && !uid.is_empty()).then(|| OwnerReference {
        api_version: "v1".into(),
        kind: "ServiceAccount".into(),
        name: name.into(),
        uid,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_account_of_the_namespace_owns_the_leases() {
        let o = service_account_of(
            "system:serviceaccount:mock-device:mock-accel-node-agent",
            "mock-device",
            "u1".into(),
        )
        .unwrap();
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ServiceAccount", "mock-accel-node-agent", "u1")
        );
        assert_eq!(
            o.controller, None,
            "no controller: the agent is not the Lease's controller"
        );
        assert!(service_account_of("system:serviceaccount:other:sa", "mock-device", "u1".into()).is_none());
        assert!(service_account_of("kubernetes-admin", "mock-device", "u1".into()).is_none());
        assert!(service_account_of("system:serviceaccount:mock-device:sa", "mock-device", String::new()).is_none());
    }

    #[test]
    fn an_owner_is_added_once() {
        let o = service_account_of("system:serviceaccount:ns:sa", "ns", "u1".into());
        let mut meta = ObjectMeta::default();
        add_owner(&mut meta, o.as_ref());
        add_owner(&mut meta, o.as_ref());
        add_owner(&mut meta, None);
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
    }
}
