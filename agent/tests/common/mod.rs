//! Helpers shared by the agent's integration tests and its benchmark.

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_device_testkit::kubelet::Claim;
use serde_json::{Value, json};

/// Creates a claim in `default` with one request of `class` per device and,
/// as the scheduler would, allocates each request its `(driver, pool,
/// device)`; returns the kubelet's name for it. No devices: left pending.
pub async fn allocated_claim(client: &Client, name: &str, class: &str, devices: &[(&str, &str, &str)]) -> Claim {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let count = devices.len().max(1);
    let requests: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("r{i}"), "exactly": {"deviceClassName": class, "count": 1}}))
        .collect();
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"devices": {"requests": requests}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    if !devices.is_empty() {
        let results: Vec<Value> = devices
            .iter()
            .enumerate()
            .map(|(i, (driver, pool, device))| {
                json!({"request": format!("r{i}"), "driver": driver, "pool": pool, "device": device})
            })
            .collect();
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": results}}}})),
        )
        .await
        .unwrap();
    }
    Claim::new("default", name, &created.uid().unwrap())
}
