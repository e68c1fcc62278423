//! A claim, from what the kubelet names and the API allocated to what
//! this node prepares: its devices on this node, or why not.

use k8s_openapi::api::resource::v1::ResourceClaim;

use super::cdi;
use super::checkpoint::{ClaimState, PreparedClaim, PreparedDevice};
use crate::claims::ClaimRef;
use crate::inventory::{Function, Inventory};
use crate::slices::device_name;

/// The annotation on a claim made from a template: the pod's name for it.
const POD_CLAIM_NAME: &str = "resource.kubernetes.io/pod-claim-name";

/// Why a claim failed: a bounded reason (metric label) and the words for
/// the kubelet's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimError {
    pub reason: &'static str,
    pub message: String,
}

impl ClaimError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> ClaimError {
        ClaimError {
            reason,
            message: message.into(),
        }
    }
}

/// From the API's allocation to what this node prepares.
/// Where a claim is prepared: this driver, on this node, its CDI spec
/// under `cdi_root`.
pub(super) struct Here<'a> {
    pub(super) driver: &'a str,
    pub(super) node: &'a str,
    pub(super) cdi_root: &'a std::path::Path,
}

pub(super) fn resolve(
    here: &Here,
    claim: &ClaimRef,
    api: &ResourceClaim,
    inv: &Inventory,
    boot: &str,
) -> Result<PreparedClaim, ClaimError> {
    let (drv, node) = (here.driver, here.node);
    let what = format!("ResourceClaim {}/{}", claim.namespace, claim.name);
    let uid = api.metadata.uid.as_deref().unwrap_or("");
    if uid != claim.uid {
        return Err(ClaimError::new(
            "uid_mismatch",
            format!(
                "{what} has UID {uid}, the kubelet asked for {} (deleted and created again?)",
                claim.uid
            ),
        ));
    }
    let results = api
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .map(|a| a.devices.as_ref().and_then(|d| d.results.clone()).unwrap_or_default())
        .ok_or_else(|| ClaimError::new("not_allocated", format!("{what} is not allocated")))?;
    let ours: Vec<_> = results.iter().filter(|r| r.driver == drv).collect();
    if ours.is_empty() {
        let others: Vec<String> = results
            .iter()
            .map(|r| format!("{}/{}/{}", r.driver, r.pool, r.device))
            .collect();
        return Err(ClaimError::new(
            "wrong_driver",
            format!(
                "{what} has no device of driver {drv} (allocated: [{}])",
                others.join(", ")
            ),
        ));
    }
    if let Some(r) = ours.iter().find(|r| r.pool != node) {
        return Err(ClaimError::new(
            "wrong_node",
            format!(
                "{what}: device {} is in pool {}, another node's; this is node {node}",
                r.device, r.pool
            ),
        ));
    }
    let mut devices: Vec<PreparedDevice> = Vec::new();
    for r in ours {
        if r.device.is_empty() || r.request.is_empty() {
            return Err(ClaimError::new(
                "invalid",
                format!("{what}: an allocation result has an empty device or request"),
            ));
        }
        let f = find_function(inv, &r.device).ok_or_else(|| unknown_device(inv, &r.device))?;
        let admin = r.admin_access.unwrap_or(false);
        let share = r.share_id.clone();
        if let Some(d) = devices
            .iter_mut()
            .find(|d| d.device == r.device && d.share_id == share && d.admin_access == admin)
        {
            d.requests.push(r.request.clone());
            continue;
        }
        devices.push(PreparedDevice {
            requests: vec![r.request.clone()],
            pool: r.pool.clone(),
            device: r.device.clone(),
            function: f.name.clone(),
            physfn: f.physfn.clone(),
            admin_access: admin,
            consumed_memory: r
                .consumed_capacity
                .as_ref()
                .and_then(|c| c.get("memory"))
                .map(|q| q.0.clone()),
            share_id: share,
            cdi_device_id: cdi::qualified_name(drv, &claim.uid, &r.device, r.share_id.as_deref()),
        });
    }
    Ok(PreparedClaim {
        namespace: claim.namespace.clone(),
        name: claim.name.clone(),
        state: ClaimState::PrepareStarted,
        boot_id: boot.to_string(),
        cdi_spec: cdi::spec_path(here.cdi_root, drv, &claim.uid),
        devices,
        pod_claim_name: api
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_CLAIM_NAME))
            .cloned(),
    })
}

pub(super) fn check_ref(c: &ClaimRef) -> Result<(), ClaimError> {
    let mut empty = Vec::new();
    for (field, v) in [("namespace", &c.namespace), ("name", &c.name), ("uid", &c.uid)] {
        if v.is_empty() {
            empty.push(field);
        }
    }
    if empty.is_empty() {
        Ok(())
    } else {
        Err(ClaimError::new(
            "invalid",
            format!("the claim's {} is empty", empty.join(" and ")),
        ))
    }
}

pub(super) fn find_function<'a>(inv: &'a Inventory, device: &str) -> Option<&'a Function> {
    inv.functions.values().find(|f| device_name(&f.name) == device)
}

pub(super) fn unknown_device(inv: &Inventory, device: &str) -> ClaimError {
    if let Some(s) = inv.skipped.iter().find(|s| device_name(&s.name) == device) {
        return ClaimError::new(
            "unknown_device",
            format!("device {device} is on this node but unreadable: {}", s.detail),
        );
    }
    ClaimError::new(
        "unknown_device",
        format!("device {device} is not on this node (no such function: removed?)"),
    )
}
