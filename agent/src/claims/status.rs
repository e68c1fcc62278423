//! A claim's `status.devices` (KEP-4817 device status), as this driver
//! writes it: the conditions of its devices, each set by the one writer
//! that owns its type — the kubelet plugin `Ready`
//! ([`crate::plugin::status`]), the binding reporter the fabric conditions
//! ([`crate::binding`]) — written with the claim's resourceVersion.

use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, ResourceClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use super::ClaimRef;

/// The condition of a prepared device (the kubelet plugin's).
pub const READY: &str = "Ready";

/// The binding condition of a fabric-attached device (KEP-5007): the
/// scheduler binds a pod to it only once the claim's device status says
/// `FabricAttached` is True, and gives the allocation up (and tries again)
/// when `FabricAttachFailed` is. The node agent reports both
/// (`crate::binding`).
pub const ATTACHED_CONDITION: &str = "FabricAttached";
pub const ATTACH_FAILED_CONDITION: &str = "FabricAttachFailed";

/// A device of a claim as its status names it: pool, device, and the share
/// of a device several claims hold (the API requires it to match).
pub type DeviceKey = (String, String, Option<String>);

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
