//! The node agent's heartbeat: a `coordination.k8s.io/v1` Lease per node
//! (holder = node name), renewed every `interval`, valid for four of them
//! (as the kubelet's node Lease). The controller tells from it which nodes
//! run the agent, and which agents are gone (their slices then go too).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use metrics::counter;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics as m;
use crate::slices::labels;

/// The Lease of `node`'s agent: `<driver>-<node>`; when that is longer than
/// a name may be (253), `<driver>-<20 hex digits of the node name's
/// SHA-256>`: unique per node (a cut name was not: two long node names with
/// the same beginning shared a Lease), and what the chart's admission policy
/// accepts (the node comes from the Lease's holder, never its name).
pub fn lease_name(driver: &str, node: &str) -> String {
    let name = format!("{driver}-{node}");
    if name.len() <= 253 {
        return name;
    }
    let digest = Sha256::digest(node.as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!("{driver}-{hex}")
}

/// The label selector of a driver's agent Leases.
pub fn selector(driver: &str) -> String {
    format!("driver={driver},app.kubernetes.io/managed-by=mock-accel-agent")
}

/// Renews the Lease until cancelled; API failures are logged, counted and
/// retried at the next beat (the Lease is valid for four).
pub async fn run(
    api: Api<Lease>,
    driver: String,
    node: String,
    interval: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let name = lease_name(&driver, &node);
    let mut owner = crate::api::LeaseOwner::new(api.clone().into_client(), api.namespace());
    let duration = (interval.as_secs_f64() * 4.0).ceil().max(1.0) as i32;
    let mut tick = tokio::time::interval(interval);
    let mut first = true;
    // The Lease as we last wrote it: renewed in one request (its
    // resourceVersion rides along); read again only after a failure.
    let mut last: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // One beat at most an interval long (as the kubelet's node Lease):
        // one hung on a dead connection must not stop the next ones.
        let previous = last.take();
        let beating = tokio::time::timeout(interval, async {
            let owner = owner.get().await;
            beat(&api, &name, &driver, &node, duration, owner.as_ref(), previous).await
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = beating => match r {
                Ok(r) => r.map_err(|e| (m::api_error_kind(&e), e.to_string())),
                Err(_) => Err(("timeout", format!("no answer within {interval:?}"))),
            },
        };
        match result.map(|written| last = Some(written)) {
            Ok(()) => {
                counter!(m::HEARTBEATS).increment(1);
                if first {
                    info!(lease = %name, namespace = ?api.resource_url(), "heartbeat Lease renewed");
                    first = false;
                }
                debug!(lease = %name, "heartbeat");
            }
            Err((kind, e)) => {
                counter!(m::API_ERRORS, "kind" => kind).increment(1);
                counter!(m::HEARTBEAT_FAILURES).increment(1);
                warn!(lease = %name, error = %e, "could not renew the heartbeat Lease; retrying at the next beat");
            }
        }
    }
}

async fn beat(
    api: &Api<Lease>,
    name: &str,
    driver: &str,
    node: &str,
    duration: i32,
    owner: Option<&OwnerReference>,
    last: Option<Lease>,
) -> Result<Lease, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let current = match last {
        Some(l) => Some(l),
        None => api.get_opt(name).await?,
    };
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels(driver, node)),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(node) {
                spec.acquire_time = Some(now.clone());
            }
            spec.holder_identity = Some(node.into());
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(now);
            lease.metadata.labels = Some(labels(driver, node));
            crate::api::add_owner(&mut lease.metadata, owner);
            api.replace(name, &PostParams::default(), &lease).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_the_node_names_or_unique_hashes_when_too_long() {
        assert_eq!(
            lease_name("mock-accel.example.com", "node-a"),
            "mock-accel.example.com-node-a"
        );
        let long = |tail: &str| format!("{}{tail}", "n".repeat(240));
        let (a, b) = (
            lease_name("mock-accel.example.com", &long("a")),
            lease_name("mock-accel.example.com", &long("b")),
        );
        assert_ne!(a, b, "two long node names with the same beginning share no Lease");
        for n in [&a, &b] {
            assert!(n.len() <= 253, "{n}");
            let hex = n.strip_prefix("mock-accel.example.com-").unwrap();
            assert!(
                hex.len() == 20 && hex.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{n}"
            );
        }
        let exact = "n".repeat(253 - "mock-accel.example.com-".len());
        assert_eq!(lease_name("mock-accel.example.com", &exact).len(), 253);
    }
}
