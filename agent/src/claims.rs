//! What a ResourceClaim's allocation says about this driver, read the same
//! way by the kubelet plugin (status reports) and the controller (fleet).

use k8s_openapi::api::resource::v1::{DeviceRequestAllocationResult, ResourceClaim};

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

/// `(pool, device)` of `driver` allocated to a claim.
pub fn allocated_devices<'a>(claim: &'a ResourceClaim, driver: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    results(claim, driver).map(|r| (r.pool.as_str(), r.device.as_str()))
}
