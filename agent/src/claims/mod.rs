//! What a ResourceClaim's allocation says about this driver, read the same
//! way by the kubelet plugin (status reports), the binding reporter and
//! the controller (fleet); [`status`] writes its device status.

pub mod status;

use k8s_openapi::api::resource::v1::{DeviceRequestAllocationResult, ResourceClaim};

/// What the kubelet names: a claim by namespace, name and UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// The allocation results of `driver` in a claim.
pub fn results<'a>(
    claim: &'a ResourceClaim,
    driver: &'a str,
) -> impl Iterator<Item = &'a DeviceRequestAllocationResult> {
    claim
        .status
        .iter()
        .filter_map(|s| s.allocation.as_ref())
        .filter_map(|a| a.devices.as_ref())
        .flat_map(|d| d.results.iter().flatten())
        .filter(move |r| r.driver == driver)
}

/// Whether the claim's device status settles an allocated device's binding
/// conditions the way the scheduler reads them (KEP-5007): one of its
/// failure conditions True, or all of its binding conditions True (a device
/// without any is settled).
pub fn binding_settled(claim: &ResourceClaim, r: &DeviceRequestAllocationResult) -> bool {
    let conditions: Vec<_> = claim
        .status
        .iter()
        .flat_map(|s| s.devices.iter().flatten())
        .filter(|d| d.driver == r.driver && d.pool == r.pool && d.device == r.device && d.share_id == r.share_id)
        .flat_map(|d| d.conditions.iter().flatten())
        .collect();
    let is_true = |t: &String| conditions.iter().any(|c| &c.type_ == t && c.status == "True");
    r.binding_failure_conditions.iter().flatten().any(is_true) || r.binding_conditions.iter().flatten().all(is_true)
}

/// `(pool, device)` of `driver` allocated to a claim.
pub fn allocated_devices<'a>(claim: &'a ResourceClaim, driver: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    results(claim, driver).map(|r| (r.pool.as_str(), r.device.as_str()))
}
