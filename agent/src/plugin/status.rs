//! Tells the API a claim's devices are prepared on this node, in the
//! claim's `status.devices` (KEP-4817 device status): one entry per device
//! of ours with a `Ready` condition, removed again at unprepare. The
//! controller counts prepared claims from it.
//!
//! Best effort and out of the kubelet's path: updates queue to one task
//! that applies them in order (prepare, then unprepare, never the reverse),
//! with the claim's resourceVersion (409 → read again). A failure is
//! logged and counted; the preparation itself stands.

use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use metrics::counter;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::checkpoint::PreparedDevice;
use super::driver::ClaimRef;
use crate::metrics as m;

pub struct Update {
    pub claim: ClaimRef,
    /// `(pool, device)` prepared; empty: released.
    pub devices: Vec<(String, String)>,
}

impl Update {
    pub fn prepared(claim: &ClaimRef, devices: &[PreparedDevice]) -> Update {
        Update {
            claim: claim.clone(),
            devices: devices.iter().map(|d| (d.pool.clone(), d.device.clone())).collect(),
        }
    }

    pub fn released(claim: &ClaimRef) -> Update {
        Update {
            claim: claim.clone(),
            devices: Vec::new(),
        }
    }
}

/// Starts the reporter; it ends when the sender is dropped.
pub fn spawn(client: Client, driver: String, node: String) -> mpsc::UnboundedSender<Update> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            let result = apply(&client, &driver, &node, &u).await;
            let outcome = match &result {
                Ok(true) => "written",
                Ok(false) => "unchanged",
                Err(_) => "error",
            };
            counter!(m::CLAIM_STATUS_UPDATES, "result" => outcome).increment(1);
            match result {
                Ok(_) => debug!(claim = %u.claim, outcome, "claim device status"),
                Err(e) => warn!(claim = %u.claim, error = %e, "could not report the claim's device status"),
            }
        }
    });
    tx
}

/// `status.devices` with ours replaced by `devices` (others' kept).
pub fn merged(
    claim: &ResourceClaim,
    driver: &str,
    node: &str,
    devices: &[(String, String)],
) -> Vec<AllocatedDeviceStatus> {
    let old = claim
        .status
        .as_ref()
        .and_then(|s| s.devices.clone())
        .unwrap_or_default();
    let mut out: Vec<AllocatedDeviceStatus> = old.iter().filter(|d| d.driver != driver).cloned().collect();
    for (pool, device) in devices {
        // Keep an entry that already says so (its transition time with it).
        if let Some(same) = old.iter().find(|d| {
            d.driver == driver
                && &d.pool == pool
                && &d.device == device
                && d.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }) {
            out.push(same.clone());
            continue;
        }
        out.push(AllocatedDeviceStatus {
            driver: driver.to_string(),
            pool: pool.clone(),
            device: device.clone(),
            conditions: Some(vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Prepared".into(),
                message: format!("prepared on node {node}"),
                last_transition_time: Time(Timestamp::now()),
                observed_generation: claim.metadata.generation,
            }]),
            ..Default::default()
        });
    }
    out
}

async fn apply(client: &Client, driver: &str, node: &str, u: &Update) -> Result<bool, kube::Error> {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &u.claim.namespace);
    for _ in 0..5 {
        let Some(mut claim) = api.get_opt(&u.claim.name).await? else {
            return Ok(false);
        };
        if claim.uid().as_deref() != Some(u.claim.uid.as_str()) {
            return Ok(false); // Another claim of that name now.
        }
        // Only devices the allocation still holds can carry a status.
        let allocated: Vec<(String, String)> = crate::claims::allocated_devices(&claim, driver)
            .map(|(p, d)| (p.to_string(), d.to_string()))
            .collect();
        let wanted: Vec<(String, String)> = u.devices.iter().filter(|d| allocated.contains(d)).cloned().collect();
        let next = merged(&claim, driver, node, &wanted);
        let current = claim
            .status
            .as_ref()
            .and_then(|s| s.devices.clone())
            .unwrap_or_default();
        if next == current {
            return Ok(false);
        }
        let status = claim.status.get_or_insert_with(Default::default);
        status.devices = if next.is_empty() { None } else { Some(next) };
        match api.replace_status(&u.claim.name, &PostParams::default(), &claim).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(
        kube::core::Status::failure("the claim kept changing (409 five times)", "Conflict")
            .with_code(409)
            .boxed(),
    ))
}
