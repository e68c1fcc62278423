//! `--mode=check`: what the chart's `helm test` runs, with the driver's own
//! image (no third-party image to pull, no shell): this driver's
//! ResourceSlices, read through the API with the pod's service account as
//! any client of the cluster reads them. It fails, saying why, when there is
//! none or when none of them lists a device.

use anyhow::Context;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::Args;
use crate::api::Clients;

/// Prints each slice of the driver (node, pool, devices) and Ok when at
/// least one device is published.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let clients = Clients::infer(args.api_timeout).await?;
    let slices: Api<ResourceSlice> = Api::all(clients.requests);
    let selector = format!("driver={}", args.driver_name);
    let list = slices
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the ResourceSlices labelled {selector}"))?;
    let mut devices = 0;
    for slice in &list.items {
        let n = slice.spec.devices.as_ref().map_or(0, Vec::len);
        devices += n;
        println!(
            "ResourceSlice {}: node {}, pool {} (generation {}), {n} devices",
            slice.name_any(),
            slice.spec.node_name.as_deref().unwrap_or("-"),
            slice.spec.pool.name,
            slice.spec.pool.generation,
        );
    }
    anyhow::ensure!(
        devices > 0,
        "no device in any ResourceSlice of {} ({} slices): are the node agents running, and the module loaded?",
        args.driver_name,
        list.items.len()
    );
    println!(
        "{devices} devices of {} in {} ResourceSlices",
        args.driver_name,
        list.items.len()
    );
    Ok(())
}
