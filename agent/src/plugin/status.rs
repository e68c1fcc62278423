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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use metrics::counter;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::checkpoint::{Checkpoint, ClaimState};
use super::driver::ClaimRef;
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
/// A device of a claim as its status names it: pool, device, and the share
/// of a device several claims hold (the API requires it to match).
pub type DeviceKey = (String, String, Option<String>);

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

/// The condition of a prepared device.
pub const READY: &str = "Ready";

/// Sets (`Some`) or clears (`None`) one condition type on the entry of
/// `key` in `status.devices`, leaving other writers' conditions and
/// entries alone: the plugin owns `Ready`, the binding reporter
/// (`crate::binding`) the fabric conditions. A condition already True with
/// the same reason is kept as it is (its transition time with it); an
/// entry left with nothing in it goes.
pub fn set_condition(
    list: &mut Vec<AllocatedDeviceStatus>,
    driver: &str,
    key: &DeviceKey,
    type_: &str,
    condition: Option<Condition>,
) {
    let (pool, device, share) = key;
    let at = list
        .iter()
        .position(|d| d.driver == driver && &d.pool == pool && &d.device == device && &d.share_id == share);
    let Some(at) = at else {
        if let Some(c) = condition {
            list.push(AllocatedDeviceStatus {
                driver: driver.to_string(),
                pool: pool.clone(),
                device: device.clone(),
                share_id: share.clone(),
                conditions: Some(vec![c]),
                ..Default::default()
            });
        }
        return;
    };
    let entry = &mut list[at];
    let conditions = entry.conditions.get_or_insert_with(Vec::new);
    let old = conditions.iter().position(|c| c.type_ == type_);
    match (old, condition) {
        (Some(i), Some(c)) if conditions[i].status == c.status && conditions[i].reason == c.reason => {}
        (Some(i), Some(c)) => conditions[i] = c,
        (None, Some(c)) => conditions.push(c),
        (Some(i), None) => {
            conditions.remove(i);
        }
        (None, None) => {}
    }
    if conditions.is_empty() {
        entry.conditions = None;
    }
    if entry.conditions.is_none() && entry.data.is_none() && entry.network_data.is_none() {
        list.remove(at);
    }
}

/// A True condition written by this agent.
pub fn condition(claim: &ResourceClaim, type_: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(Timestamp::now()),
        observed_generation: claim.metadata.generation,
    }
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

/// Writes the claim's `status.devices` as `next` computes it from the
/// claim as it is now: read, computed, written with that resourceVersion
/// (409: again, five times at most). `Ok(false)`: nothing to change, or
/// the claim is gone or another one of that name.
pub async fn write_devices(
    api: &Api<ResourceClaim>,
    claim: &ClaimRef,
    mut next: impl FnMut(&ResourceClaim) -> Result<Vec<AllocatedDeviceStatus>, kube::Error>,
) -> Result<bool, kube::Error> {
    for _ in 0..5 {
        let Some(mut current) = api.get_opt(&claim.name).await? else {
            return Ok(false);
        };
        if current.uid().as_deref() != Some(claim.uid.as_str()) {
            return Ok(false); // Another claim of that name now.
        }
        let devices = next(&current)?;
        let old = current
            .status
            .as_ref()
            .and_then(|s| s.devices.clone())
            .unwrap_or_default();
        if devices == old {
            return Ok(false);
        }
        let status = current.status.get_or_insert_with(Default::default);
        status.devices = if devices.is_empty() { None } else { Some(devices) };
        match api.replace_status(&claim.name, &PostParams::default(), &current).await {
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

/// For tests against an API server.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use kube::api::{Patch, PatchParams};

    /// Claim `default/c` (one request `r` for a PF) with `status` patched in.
    pub async fn claim_with_status(api: &Api<ResourceClaim>, status: serde_json::Value) -> ClaimRef {
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "c", "namespace": "default"},
                    "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "mock-accel-pf"}}]}}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        api.patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
        ClaimRef {
            namespace: "default".into(),
            name: "c".into(),
            uid: created.uid().unwrap(),
        }
    }
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
        let claim = testing::claim_with_status(
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
