//! Tells the API a claim's devices are prepared on this node, in the
//! claim's `status.devices` (KEP-4817 device status): one entry per device
//! of ours with a `Ready` condition, removed again at unprepare. The
//! controller counts prepared claims from it.
//!
//! Best effort and out of the kubelet's path: a change queues the claim to
//! one task, which writes what the node's checkpoint says *when it writes*
//! (read after the claim, and written with the claim's resourceVersion:
//! 409 → read both again). Not what was queued: during a rolling update two
//! agent pods report, and a late "prepared" from one must not overwrite the
//! other's "released" (the checkpoint is the node's, shared by both). A
//! failure is logged and counted; the preparation itself stands.

use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use kube::Client;
use kube::api::Api;
use metrics::counter;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::checkpoint::{Checkpoint, ClaimState};
use crate::claims::ClaimRef;
use crate::claims::status::{DeviceKey, READY, condition, set_condition, write_devices};
use crate::metrics as m;

/// A claim whose preparation on this node changed.
pub struct Update {
    pub claim: ClaimRef,
}

/// Starts the reporter; it ends when the sender is dropped.
pub fn spawn(client: Client, driver: String, node: String, checkpoint: Checkpoint) -> mpsc::UnboundedSender<Update> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            let result = apply(&client, &driver, &node, &checkpoint, &u).await;
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

/// The claim's devices prepared on this node, as the checkpoint says now.
fn prepared_now(checkpoint: &Checkpoint, uid: &str) -> Result<Vec<DeviceKey>, kube::Error> {
    let claims = checkpoint.load().map_err(|e| {
        kube::Error::Service(format!("reading the checkpoint {}: {e}", checkpoint.path.display()).into())
    })?;
    Ok(claims
        .0
        .get(uid)
        .filter(|c| c.state == ClaimState::PrepareCompleted)
        .map(|c| {
            c.devices
                .iter()
                .map(|d| (d.pool.clone(), d.device.clone(), d.share_id.clone()))
                .collect()
        })
        .unwrap_or_default())
}

/// `status.devices` with `Ready` on exactly `devices` of ours on this node
/// (others' entries and other conditions kept).
pub fn merged(claim: &ResourceClaim, driver: &str, node: &str, devices: &[DeviceKey]) -> Vec<AllocatedDeviceStatus> {
    let mut out = claim
        .status
        .as_ref()
        .and_then(|s| s.devices.clone())
        .unwrap_or_default();
    let ours: Vec<DeviceKey> = out
        .iter()
        .filter(|d| d.driver == driver && d.pool == node)
        .map(|d| (d.pool.clone(), d.device.clone(), d.share_id.clone()))
        .collect();
    for key in ours.iter().filter(|k| !devices.contains(k)) {
        set_condition(&mut out, driver, key, READY, None);
    }
    for key in devices {
        let ready = condition(claim, READY, "Prepared", format!("prepared on node {node}"));
        set_condition(&mut out, driver, key, READY, Some(ready));
    }
    out
}

async fn apply(
    client: &Client,
    driver: &str,
    node: &str,
    checkpoint: &Checkpoint,
    u: &Update,
) -> Result<bool, kube::Error> {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &u.claim.namespace);
    write_devices(&api, &u.claim, |claim| {
        // After the claim: a change saved after this read writes the claim
        // after it too, and our write, with this resourceVersion, fails.
        let devices = prepared_now(checkpoint, &u.claim.uid)?;
        // Only devices the allocation still holds can carry a status.
        let allocated: Vec<DeviceKey> = crate::claims::results(claim, driver)
            .map(|r| (r.pool.clone(), r.device.clone(), r.share_id.clone()))
            .collect();
        let wanted: Vec<DeviceKey> = devices.into_iter().filter(|d| allocated.contains(d)).collect();
        Ok(merged(claim, driver, node, &wanted))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::checkpoint::{Claims, PreparedClaim, PreparedDevice};
    use super::*;
    use mock_device_testkit::apiserver::{ApiServer, Config};
    use serde_json::json;

    const D: &str = "mock-accel.example.com";

    fn ours(claim: &ResourceClaim) -> Vec<String> {
        claim
            .status
            .as_ref()
            .and_then(|s| s.devices.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.driver == D)
            .map(|d| d.device)
            .collect()
    }

    /// Issue 18 #9: two agent pods report one claim (a rolling update):
    /// pod A prepared it, pod B released it, and A's report, queued behind
    /// other work, lands last. The report carried "prepared" and wrote it,
    /// over B's "released", for good. A report now writes what the node's
    /// checkpoint holds when it writes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_late_report_writes_what_the_node_holds_now() {
        let server = ApiServer::start(Config::default()).unwrap();
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
        let claim = crate::claims::status::testing::claim_with_status(
            &api,
            json!({"allocation": {"devices": {"results": [
                {"request": "r", "driver": D, "pool": "node-a", "device": "mock0"}]}}}),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = Checkpoint::new(dir.path(), D, "node-a");
        let prepared = Claims(BTreeMap::from([(
            claim.uid.clone(),
            PreparedClaim {
                namespace: "default".into(),
                name: "c".into(),
                state: ClaimState::PrepareCompleted,
                boot_id: "b".into(),
                cdi_spec: dir.path().join("spec.json"),
                devices: vec![PreparedDevice {
                    requests: vec!["r".into()],
                    pool: "node-a".into(),
                    device: "mock0".into(),
                    function: "mock0".into(),
                    physfn: None,
                    admin_access: false,
                    share_id: None,
                    consumed_memory: None,
                    cdi_device_id: "x".into(),
                }],
                pod_claim_name: None,
            },
        )]));
        let update = Update { claim: claim.clone() };
        let report = || apply(&client, D, "node-a", &checkpoint, &update);
        // Pod A prepares and reports.
        checkpoint.save(&prepared).unwrap();
        assert!(report().await.unwrap());
        assert_eq!(ours(&api.get("c").await.unwrap()), ["mock0"]);
        // Pod B releases and reports.
        checkpoint.save(&Claims::default()).unwrap();
        assert!(report().await.unwrap());
        assert!(ours(&api.get("c").await.unwrap()).is_empty());
        // A's report of its preparation, late: the node holds nothing now.
        assert!(!report().await.unwrap());
        assert!(ours(&api.get("c").await.unwrap()).is_empty());
    }
}
