//! The node agent's heartbeat: a `coordination.k8s.io/v1` Lease per node
//! (holder = node name), renewed every `interval`, valid for four of them
//! (as the kubelet's node Lease). The controller tells from it which nodes
//! run the agent, and which agents are gone (their slices then go too).
//!
//! A fleet (`--mode=fleet`) is one process for all its nodes: it renews one
//! Lease of its own ([`fleet_lease_name`], labelled [`FLEET_LABEL`]) and
//! writes each served node's Lease once, naming the fleet's in the
//! [`VIA`] annotation — the node's heartbeat is the fleet's (it is alive
//! exactly while the fleet is), at one write per interval for the whole
//! fleet instead of one per node.

use std::collections::BTreeMap;
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

/// The annotation of a node's Lease whose heartbeat is another Lease's
/// (a fleet's node): that Lease's name, in the same namespace.
pub const VIA: &str = "mock-accel.example.com/heartbeat-via";

/// The label of a fleet's own heartbeat Lease (value `true`): it stands
/// for the nodes whose Leases name it in [`VIA`], and for no node itself.
pub const FLEET_LABEL: &str = "mock-accel.example.com/fleet-heartbeat";

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
    format!("{driver}-{}", hex20(node))
}

/// A fleet's own Lease: `<driver>-fleet-<20 hex digits of its node
/// selector's SHA-256>` — one per selector, the same across restarts.
pub fn fleet_lease_name(driver: &str, selector: &str) -> String {
    format!("{driver}-fleet-{}", hex20(selector))
}

fn hex20(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The label selector of a driver's agent Leases (a fleet's too).
pub fn selector(driver: &str) -> String {
    format!("driver={driver},app.kubernetes.io/managed-by=mock-accel-agent")
}

/// One heartbeat Lease as it is written.
#[derive(Clone)]
struct Shape {
    name: String,
    holder: String,
    labels: BTreeMap<String, String>,
    /// The Lease whose renewals stand for this one's.
    via: Option<String>,
}

impl Shape {
    fn node(driver: &str, node: &str, via: Option<String>) -> Shape {
        Shape {
            name: lease_name(driver, node),
            holder: node.to_string(),
            labels: labels(driver, node),
            via,
        }
    }
}

/// Renews `node`'s Lease until cancelled; API failures are logged, counted
/// and retried at the next beat (the Lease is valid for four).
pub async fn run(
    api: Api<Lease>,
    driver: String,
    node: String,
    interval: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    renew(api, Shape::node(&driver, &node, None), interval, cancel).await
}

/// A fleet's heartbeat: renews its own Lease (holder `identity`) until
/// cancelled, as [`run`] a node's.
pub async fn run_fleet(
    api: Api<Lease>,
    driver: String,
    node_selector: String,
    identity: String,
    interval: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut labels = labels(&driver, "");
    labels.remove("node");
    labels.insert(FLEET_LABEL.to_string(), "true".to_string());
    let shape = Shape {
        name: fleet_lease_name(&driver, &node_selector),
        holder: identity,
        labels,
        via: None,
    };
    renew(api, shape, interval, cancel).await
}

/// A fleet's node: writes its Lease once, naming the fleet's Lease as its
/// heartbeat (retried every `interval` until written), then holds until
/// cancelled. The Lease's own renewTime is when it was written: should the
/// fleet's Lease go, the node's agent is taken for gone from then.
pub async fn delegate(
    api: Api<Lease>,
    driver: String,
    node: String,
    fleet_lease: String,
    interval: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let shape = Shape::node(&driver, &node, Some(fleet_lease));
    let mut owner = crate::api::LeaseOwner::new(api.clone().into_client(), api.namespace());
    let duration = lease_seconds(interval);
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let writing = tokio::time::timeout(interval, async {
            let owner = owner.get().await;
            beat(&api, &shape, duration, owner.as_ref(), None).await
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = writing => r,
        };
        match result {
            Ok(Ok(_)) => {
                counter!(m::HEARTBEATS).increment(1);
                debug!(lease = %shape.name, "heartbeat Lease written, beating via the fleet's");
                cancel.cancelled().await;
                return Ok(());
            }
            Ok(Err(e)) => {
                counter!(m::API_ERRORS, "kind" => m::api_error_kind(&e)).increment(1);
                counter!(m::HEARTBEAT_FAILURES).increment(1);
                warn!(lease = %shape.name, error = %e, "could not write the node's heartbeat Lease; retrying");
            }
            Err(_) => {
                counter!(m::API_ERRORS, "kind" => "timeout").increment(1);
                counter!(m::HEARTBEAT_FAILURES).increment(1);
                warn!(lease = %shape.name, "could not write the node's heartbeat Lease within {interval:?}; retrying");
            }
        }
    }
}

/// Valid for four intervals, in whole seconds (at least one).
fn lease_seconds(interval: Duration) -> i32 {
    (interval.as_secs_f64() * 4.0).ceil().max(1.0) as i32
}

async fn renew(api: Api<Lease>, shape: Shape, interval: Duration, cancel: CancellationToken) -> anyhow::Result<()> {
    let name = shape.name.clone();
    let mut owner = crate::api::LeaseOwner::new(api.clone().into_client(), api.namespace());
    let duration = lease_seconds(interval);
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
            beat(&api, &shape, duration, owner.as_ref(), previous).await
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
    shape: &Shape,
    duration: i32,
    owner: Option<&OwnerReference>,
    last: Option<Lease>,
) -> Result<Lease, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let current = match last {
        Some(l) => Some(l),
        None => api.get_opt(&shape.name).await?,
    };
    let via = |annotations: &mut Option<BTreeMap<String, String>>| match &shape.via {
        Some(v) => {
            annotations
                .get_or_insert_with(Default::default)
                .insert(VIA.to_string(), v.clone());
        }
        None => {
            if let Some(a) = annotations.as_mut() {
                a.remove(VIA);
            }
        }
    };
    match current {
        None => {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(shape.name.clone()),
                    labels: Some(shape.labels.clone()),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(shape.holder.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            via(&mut lease.metadata.annotations);
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(shape.holder.as_str()) {
                spec.acquire_time = Some(now.clone());
            }
            spec.holder_identity = Some(shape.holder.clone());
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(now);
            lease.metadata.labels = Some(shape.labels.clone());
            via(&mut lease.metadata.annotations);
            crate::api::add_owner(&mut lease.metadata, owner);
            api.replace(&shape.name, &PostParams::default(), &lease).await
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
